/**
 * The expiry of the certificates our listeners present (the gRPC server's
 * TLS_CERT, the bounce intake's BOUNCE_TLS_CERT), told at start-up and kept
 * in otp_tls_certificate_expiry_timestamp_seconds, so that an alert fires
 * days before a certificate runs out instead of a relay or a caller finding
 * out.
 *
 * Told at start-up and again whenever a renewed certificate is applied
 * (tls/certificate-reloader.ts), so the gauge is always the certificate the
 * process really presents: renewed files that were refused leave it, and
 * the alert, where they were.
 *
 * An expired certificate is logged as an error but does not stop the start:
 * a relay that encrypts without verifying (Postfix `encrypt` or `may`, the
 * usual for MX traffic) still delivers its DSNs over TLS, one that verifies
 * keeps them queued and retries for days, and refusing to start would also
 * take SendOtp down for every caller, a larger outage than the one it reports.
 */
import { X509Certificate } from "node:crypto";
import type { Clock } from "../clock.js";
import { crlAheadLimitMs, durationText, type ClientCrls } from "../tls/client-crl.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "./metrics.js";

/** The `certificate` label: which listener presents it. */
export type CertificateRole = "grpc" | "bounce_intake";

/** The variable each role's certificate comes from, for log lines an operator can act on. */
const variables: Readonly<Record<CertificateRole, string>> = { grpc: "TLS_CERT", bounce_intake: "BOUNCE_TLS_CERT" };

export interface CertificateExpiryOptions {
  readonly metrics: Pick<Metrics, "tlsCertificateExpiry">;
  readonly logger: Logger;
  readonly clock: Clock;
  /** Warn when the certificate expires within this long (default 14 days). */
  readonly warnWithinMs?: number;
  /** The certificate is a file that is re-read (the advice is then to renew it, not to restart too). */
  readonly reloadable?: boolean;
}

const day = 86_400_000;

/**
 * Sets the role's expiry gauge from `pem` (its first certificate: the leaf)
 * and logs an error when it has expired, a warning when it expires within
 * `warnWithinMs` or is not valid yet.
 */
export function reportCertificateExpiry(role: CertificateRole, pem: string, options: CertificateExpiryOptions): void {
  const certificate = new X509Certificate(pem);
  const notAfter = certificate.validToDate.getTime();
  const notBefore = certificate.validFromDate.getTime();
  options.metrics.tlsCertificateExpiry.set({ certificate: role }, Math.floor(notAfter / 1000));

  const now = options.clock.now();
  const variable = variables[role];
  const fields = {
    certificate: role,
    subject: certificate.subject.replace(/\n/g, ", "),
    not_after: new Date(notAfter).toISOString(),
  };
  const hint = options.reloadable === true
    ? `renew ${variable} (and its key); renewed files are picked up without a restart`
    : `renew ${variable} (and its key) and restart (it is PEM text, read at start-up only)`;
  if (notAfter <= now) {
    options.logger.error(fields, `${variable} has expired: ${hint}; clients that verify it refuse the connection`);
  } else if (notAfter - now <= (options.warnWithinMs ?? 14 * day)) {
    const daysLeft = Math.floor(((notAfter - now) / day) * 10) / 10;
    options.logger.warn({ ...fields, days_left: daysLeft }, `${variable} expires in ${daysLeft} days: ${hint}`);
  } else if (notBefore > now) {
    options.logger.warn(
      { ...fields, not_before: new Date(notBefore).toISOString() },
      `${variable} is not valid yet: clients that verify it refuse the connection until then (is this host's clock right?)`,
    );
  }
}

export interface ClientCrlExpiryOptions {
  readonly metrics: Pick<Metrics, "tlsClientCrlNextUpdate">;
  readonly logger: Logger;
  readonly clock: Clock;
  /** The CRLs are a file that is re-read. */
  readonly reloadable: boolean;
}

/**
 * How long before a CRL's nextUpdate a warning is logged (the alert
 * OtpTlsClientCrlExpiresSoon uses the same). CAs publish CRLs from days to
 * minutes ahead of nextUpdate; six hours leaves time to act on a publisher
 * that stopped without warning about most CAs' routine.
 */
export const clientCrlWarnWithinMs = 6 * 3_600_000;

/**
 * Sets otp_tls_client_crl_next_update_timestamp_seconds to the CRLs now
 * in use (TLS_CLIENT_CRL) and warns of a CA whose newest CRL expires soon:
 * an expired CRL is refused by the checks, but the one in use expires
 * while it is served, and from then on TLS refuses every client
 * certificate of its CA. Also warns of a CA whose CRL is still to come
 * (tls/client-crl.ts, `pending`): what TLS does until then, and that a
 * clock is off; an error when it is further ahead than start-up takes.
 */
export function reportClientCrlExpiry(crls: ClientCrls, options: ClientCrlExpiryOptions): void {
  const { metrics, logger } = options;
  metrics.tlsClientCrlNextUpdate.reset();
  const now = options.clock.now();
  for (const { subject, nextUpdate, pending } of crls.authorities) {
    if (pending !== undefined) reportPending(subject, pending, now, options);
    if (nextUpdate === undefined) continue;
    metrics.tlsClientCrlNextUpdate.set({ issuer: subject }, Math.floor(nextUpdate / 1000));
    if (nextUpdate - now <= clientCrlWarnWithinMs) {
      const hoursLeft = Math.floor(((nextUpdate - now) / 3_600_000) * 10) / 10;
      logger.warn(
        { issuer: subject, next_update: new Date(nextUpdate).toISOString(), hours_left: hoursLeft },
        `the CRL of ${subject} (TLS_CLIENT_CRL) expires in ${hoursLeft} hours, and then TLS refuses every client certificate of that CA: ` +
          (options.reloadable ? "publish a new CRL; the file is re-read without a restart" : "publish a new CRL and restart (it is PEM text, read at start-up only)"),
      );
    }
  }
}

function reportPending(subject: string, pending: { thisUpdate: number; kept: boolean }, now: number, options: ClientCrlExpiryOptions): void {
  const ahead = pending.thisUpdate - now;
  const at = new Date(pending.thisUpdate).toISOString();
  const what = `the ${pending.kept ? "new " : ""}CRL of ${subject} (TLS_CLIENT_CRL) is not valid until ${at} (its thisUpdate, ${durationText(ahead)} ahead of this host's clock: clock skew?): `;
  const meanwhile = pending.kept
    ? "TLS keeps using the CRL in force for that CA until then, and the new one from then on"
    : "TLS refuses every client certificate of that CA until then (certificate_refusal crl_not_yet_valid)";
  const fields = { issuer: subject, this_update: at, clock: new Date(now).toISOString(), ahead_seconds: Math.ceil(ahead / 1000), crl_in_force_kept: pending.kept };
  if (ahead > crlAheadLimitMs) {
    // Only a reload gets here (start-up refuses it): what is served is right, but a restart would stop on this file.
    options.logger.error(
      fields,
      `${what}${meanwhile}. The service would not start with this file (exit 78, more than ${durationText(crlAheadLimitMs)} ahead): check this host's clock and the CA's`,
    );
  } else {
    options.logger.warn(fields, `${what}${meanwhile}`);
  }
}
