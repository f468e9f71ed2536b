/**
 * What every doctor check returns, and the report that gathers them.
 */

/**
 * - pass: nothing to do.
 * - warn: mail goes out, but something will hurt (or could not be checked).
 * - fail: mail will be junked or rejected, or bounces lost, until it is fixed.
 */
export type CheckStatus = "pass" | "warn" | "fail";

/** Stable identifiers of the checks, for machines reading `--json`. */
export type CheckId =
  | "spf.from"
  | "spf.bounce"
  | "dkim"
  | "dmarc"
  | "mx.bounce"
  | "relay.connect"
  | "relay.starttls"
  | "relay.auth"
  | "relay.dsn"
  | "ptr"
  | "dnsbl";

export interface CheckResult {
  readonly id: CheckId;
  /** What was looked at: a domain, `selector._domainkey.domain`, `host:port`, a DNSBL zone. */
  readonly subject: string;
  readonly status: CheckStatus;
  /** One line: what was found. */
  readonly summary: string;
  /** One line: what to do; empty when there is nothing to do. */
  readonly fix: string;
  /** Evidence for machines: records found, replies, the values compared. */
  readonly details: Readonly<Record<string, unknown>>;
}

export interface DoctorReport {
  /** The From domain the checks were run for. */
  readonly domain: string;
  readonly checkedAt: string;
  /** The identities the checks were run with. */
  readonly context: {
    readonly fromAddress: string;
    /** Domain of the envelope sender (BOUNCE_DOMAIN, else the From domain): SPF and bounces. */
    readonly envelopeDomain: string;
    /** The DKIM d= domain, null when we do not sign. */
    readonly dkimDomain: string | null;
    /** The relay as host:port, null without SMTP_URL. */
    readonly relay: string | null;
    readonly relayIp: string | null;
    /** Where relayIp came from: "RELAY_IP", "SMTP_URL host", or why it is unknown. */
    readonly relayIpSource: string;
  };
  /** False when any check failed. */
  readonly ok: boolean;
  readonly counts: Readonly<Record<CheckStatus, number>>;
  readonly checks: readonly CheckResult[];
}

export function check(
  id: CheckId,
  subject: string,
  status: CheckStatus,
  summary: string,
  fix = "",
  details: Record<string, unknown> = {},
): CheckResult {
  return { id, subject, status, summary, fix: status === "pass" ? "" : fix, details };
}

/** The domain part of an address, lower case. */
export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf("@") + 1).toLowerCase();
}
