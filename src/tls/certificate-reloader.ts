/**
 * Certificates renewed on disk (cert-manager, an ACME client, Vault Agent
 * replacing the files) are served without a restart.
 *
 * Every part given as a file path is read again every TLS_RELOAD_INTERVAL
 * and on SIGHUP (`reload`). When the files changed, the whole set (a
 * listener's certificate, key, client CA and client CRL) is checked as at
 * start-up (tls/certificate-set.ts) and then:
 * - applied: handed to the listener, so new connections get it while open
 *   ones keep what they negotiated; the expiry gauges follow it;
 * - refused: the certificate in use stays, and an error names the variable
 *   and the reason (never the content). The same files are reported once,
 *   however often they are read again.
 * Each outcome is counted in otp_tls_certificate_reloads_total, and
 * otp_tls_certificate_last_reload_successful is 0 while refused files sit
 * on disk (a restart would fail on them).
 *
 * Writers replace a certificate and its key one file after the other, so a
 * read can catch the new certificate with the old key. A set that fails its
 * checks is therefore not refused at once: it is read again after
 * `settleMs`, and refused only when the files still hold the same thing.
 *
 * A CRL still to come (tls/client-crl.ts, `pending`: its thisUpdate ahead
 * of our clock) is applied, counted once like any change, beside the CRL
 * in force for its CA, which TLS goes on using until then. The files do
 * not change when that time comes, so their digest would never let them be
 * looked at again: the set in use is checked again then (a timer, and
 * every read after it), which drops the kept CRL and says the new one is
 * in force. Nothing is counted then: no file changed.
 *
 * Parts given as PEM text are never re-read; a listener with no part given
 * as a file is not watched at all.
 */
import { createHash, X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { Clock } from "../clock.js";
import type { Logger } from "../logger.js";
import { createSettler, startReloadLoop, type Settle } from "../reload-loop.js";
import { reportCertificateExpiry, reportClientCrlExpiry, type CertificateRole } from "../telemetry/certificate-expiry.js";
import type { Metrics } from "../telemetry/metrics.js";
import { checkCertificateSet, subjectOf, unreadableReason, type CertificatePart, type CertificateSet } from "./certificate-set.js";
import { pendingUntil, type ClientCrls } from "./client-crl.js";

/** One part of a listener's set as configured. */
export interface WatchedPart {
  /** `TLS_CERT`, `BOUNCE_TLS_KEY`... */
  readonly variable: string;
  /** The file it comes from; undefined when it was given as PEM text (never re-read). */
  readonly path: string | undefined;
  /** The text in use, as read at start-up. */
  readonly pem: string;
}

/** A listener's certificate set, and how to serve a new one. */
export interface WatchedCertificate {
  readonly role: CertificateRole;
  readonly cert: WatchedPart;
  readonly key: WatchedPart;
  /** The client CA (gRPC with TLS_CLIENT_CA). */
  readonly ca?: WatchedPart | undefined;
  /** The client CRLs (gRPC with TLS_CLIENT_CRL). */
  readonly crl?: WatchedPart | undefined;
  /** The CRLs TLS uses at start (`crl` as start-up checked it): a reload keeps a CA's CRL from these while its new one is still to come. */
  readonly crls?: ClientCrls | undefined;
  /** Serves a checked set to new connections. */
  apply(set: CertificateSet): void;
}

export interface CertificateReloaderOptions {
  readonly certificates: readonly WatchedCertificate[];
  /** TLS_RELOAD_INTERVAL: how often the files are read; undefined: only on `reload` (SIGHUP). */
  readonly intervalMs: number | undefined;
  /** How long files that fail their checks get to settle before they are refused (default 2 s). */
  readonly settleMs?: number | undefined;
  readonly metrics: Pick<Metrics, "tlsCertificateReloads" | "tlsCertificateLastReloadSuccessful" | "tlsCertificateExpiry" | "tlsClientCrlNextUpdate">;
  readonly logger: Logger;
  readonly clock: Clock;
}

export interface CertificateReloader {
  /**
   * Reads every watched file now (what SIGHUP does). Resolves once the
   * change, if any, is applied, refused or waiting to settle; never rejects.
   */
  reload(): Promise<void>;
  /** Stops the poll and any pending re-read. */
  stop(): void;
}

const defaultSettleMs = 2000;

/** What one read of a listener's files gave: each watched part's text, or why it could not be read. */
type PartRead = { readonly text: string } | { readonly error: unknown };
type Reading = ReadonlyMap<WatchedPart, PartRead>;

/** Starts watching (logs what is watched and what is not). */
export function startCertificateReloader(options: CertificateReloaderOptions): CertificateReloader {
  const { metrics, clock, intervalMs } = options;
  const logger = options.logger.child({ component: "certificates" });
  const settleMs = options.settleMs ?? defaultSettleMs;
  const parts = (watched: WatchedCertificate): WatchedPart[] => [
    watched.cert,
    watched.key,
    ...(watched.ca === undefined ? [] : [watched.ca]),
    ...(watched.crl === undefined ? [] : [watched.crl]),
  ];

  const inline = options.certificates.flatMap((watched) => parts(watched).filter((part) => part.path === undefined).map((part) => part.variable));
  if (inline.length > 0) {
    logger.info(
      { variables: inline },
      `${inline.join(", ")} ${inline.length > 1 ? "are" : "is"} PEM text, never reloaded: give file paths to have renewed certificates served without a restart`,
    );
  }

  const withFiles = options.certificates.filter((watched) => parts(watched).some((part) => part.path !== undefined));
  // Before the states: each state's settle re-reads on this loop.
  const loop = startReloadLoop({
    intervalMs: withFiles.length === 0 ? undefined : intervalMs,
    poll: () => checkAll(false),
    onError: (error) => logger.error({ err: error }, "reading the certificate files failed unexpectedly"),
  });
  const states = withFiles.map((watched) => createState(watched));
  if (states.length > 0) {
    const files = states.flatMap((state) => state.files.map((part) => part.variable));
    logger.info(
      { files, interval_ms: intervalMs ?? null },
      intervalMs === undefined
        ? "certificate files are re-read on SIGHUP only (TLS_RELOAD_INTERVAL=off)"
        : `certificate files are re-read every ${intervalMs / 1000} s and on SIGHUP: renewed certificates are served without a restart`,
    );
  }

  /** `requested`: an operator asked (SIGHUP), so every listener answers, even "unchanged". */
  async function checkAll(requested: boolean): Promise<void> {
    for (const state of states) await state.check(undefined, requested);
  }

  return {
    reload() {
      if (states.length === 0) {
        // A SIGHUP that can change nothing says so, rather than "reading the files again" and then silence.
        logger.info(
          { variables: inline },
          inline.length === 0
            ? "no certificate file to read again: TLS_CERT and BOUNCE_TLS_CERT are not set"
            : `no certificate file to read again: ${inline.join(", ")} ${inline.length > 1 ? "are" : "is"} PEM text; renewing ${inline.length > 1 ? "them" : "it"} takes a restart`,
        );
        return Promise.resolve();
      }
      return loop.enqueue(() => checkAll(true));
    },
    stop() {
      loop.stop();
      for (const state of states) state.stop();
    },
  };

  function createState(watched: WatchedCertificate) {
    const { role } = watched;
    const all = parts(watched);
    const files = all.filter((part): part is WatchedPart & { path: string } => part.path !== undefined);
    /** The text in use for each part (watched or not). */
    const served = new Map<WatchedPart, string>(all.map((part) => [part, part.pem]));
    let servedDigest = digestOf(new Map(files.map((part): [WatchedPart, PartRead] => [part, { text: part.pem }])));
    let refusedDigest: string | undefined;
    /** Why the files at `refusedDigest` were refused, to answer a reload request while they stay. */
    let refusal: { changed: string[]; variable: string; reason: string } | undefined;
    /** Files that failed their checks once and get `settleMs` before they are refused. */
    const settler = createSettler({ settleMs, loop, reread: (settle) => check(settle) });
    /** The CRLs TLS uses now, with any kept for a CA whose new CRL is still to come. */
    let inForce = watched.crls;
    /** Set when a CA's CRL is still to come: checks the set in use again once it is valid. */
    let pendingTimer: NodeJS.Timeout | undefined;
    /** The CRLs in force whose check once their pending CRL was due failed: not checked again until others are in force. */
    let recheckFailed: ClientCrls | undefined;
    schedulePending();

    metrics.tlsCertificateReloads.labels(role, "applied").inc(0);
    metrics.tlsCertificateReloads.labels(role, "refused").inc(0);
    metrics.tlsCertificateLastReloadSuccessful.set({ certificate: role }, 1);

    /**
     * Reads the files; `confirming`: the settle whose re-read this is, `settleMs` after they failed their checks
     * (it confirms only if no other change replaced it meanwhile); `requested`: a
     * reload request (SIGHUP), answered in the log whatever the outcome, "unchanged" and "still refused" too.
     */
    async function check(confirming: Settle | undefined, requested = false): Promise<void> {
      // Before the files: what is served is checked again whatever they hold (unchanged, refused or new).
      recheckPending();
      const reads = await Promise.all(
        files.map(async (part): Promise<PartRead> => {
          try {
            return { text: await readFile(part.path, "utf8") };
          } catch (error) {
            return { error };
          }
        }),
      );
      const reading: Reading = new Map(files.map((part, index) => [part, reads[index] ?? { error: undefined }]));
      const digest = digestOf(reading);
      if (digest === servedDigest) {
        settler.stop();
        if (refusedDigest !== undefined) {
          refusedDigest = undefined;
          metrics.tlsCertificateLastReloadSuccessful.set({ certificate: role }, 1);
          logger.info({ certificate: role }, "the certificate files hold the certificate in use again");
        } else if (requested) {
          const leaf = servedLeaf();
          const names = files.map((part) => part.variable).join(", ");
          logger.info(
            { certificate: role, files: files.map((part) => part.variable), subject: leaf && subjectOf(leaf), not_after: leaf?.validToDate.toISOString() },
            `${names} unchanged: new connections still get the certificate in use` +
              (leaf === undefined ? "" : ` (${subjectOf(leaf)}, valid until ${leaf.validToDate.toISOString()})`),
          );
        }
        return;
      }
      if (digest === refusedDigest) {
        if (requested && refusal !== undefined) {
          logger.warn(
            { certificate: role, changed: refusal.changed, variable: refusal.variable, reason: refusal.reason },
            `${refusal.changed.join(", ")} still not applied: ${refusal.variable}: ${refusal.reason}. ` +
              "New connections still get the certificate in use; fix the files",
          );
        }
        return;
      }

      const changed = files.filter((part) => {
        const read = reading.get(part);
        return read === undefined || !("text" in read) || read.text !== served.get(part);
      });
      const outcome = tryApply(reading);
      if ("leaf" in outcome) {
        settler.stop();
        servedDigest = digest;
        refusedDigest = undefined;
        for (const part of files) {
          const read = reading.get(part);
          if (read !== undefined && "text" in read) served.set(part, read.text);
        }
        applied(changed, outcome.leaf, outcome.set);
        return;
      }
      const failure = outcome;

      if (!settler.confirms(confirming, digest)) {
        // Perhaps a certificate written before its key: look again before calling it broken.
        logger[requested ? "info" : "debug"](
          { certificate: role, variable: failure.variable, settle_ms: settleMs },
          "certificate files changed but do not pass their checks (yet?): reading them again before refusing",
        );
        if (!settler.settling(digest)) settler.settle(digest);
        return;
      }
      settler.stop();
      refusedDigest = digest;
      refusal = { changed: changed.map((part) => part.variable), variable: failure.variable, reason: failure.reason };
      metrics.tlsCertificateReloads.inc({ certificate: role, result: "refused" });
      metrics.tlsCertificateLastReloadSuccessful.set({ certificate: role }, 0);
      const names = changed.map((part) => part.variable);
      logger.error(
        { certificate: role, changed: names, variable: failure.variable, reason: failure.reason },
        `${names.join(", ")} changed but ${names.length > 1 ? "were" : "was"} not applied: ${failure.variable}: ${failure.reason}. ` +
          "New connections still get the certificate in use; fix the files (the service would not start with them either)",
      );
    }

    /** Checks the set the files make with the parts given inline and applies it: its leaf when applied, else why not. */
    function tryApply(reading: Reading): { leaf: X509Certificate; set: CertificateSet } | { variable: string; reason: string } {
      const pemOf = (part: WatchedPart): CertificatePart | { variable: string; reason: string } => {
        const read = reading.get(part);
        if (read === undefined) return { variable: part.variable, pem: part.pem, origin: "the value" };
        if ("error" in read) return { variable: part.variable, reason: `cannot read ${part.path ?? ""}: ${unreadableReason(read.error)}` };
        return { variable: part.variable, pem: read.text, origin: part.path ?? "the value" };
      };
      const [cert, key, ca, crl] = [
        pemOf(watched.cert),
        pemOf(watched.key),
        watched.ca === undefined ? undefined : pemOf(watched.ca),
        watched.crl === undefined ? undefined : pemOf(watched.crl),
      ];
      for (const part of [cert, key, ca, crl]) if (part !== undefined && "reason" in part) return part;
      const checked = checkCertificateSet(
        { cert: cert as CertificatePart, key: key as CertificatePart, ca: ca as CertificatePart | undefined, crl: crl as CertificatePart | undefined },
        clock.now(),
        { inForce },
      );
      if (!checked.ok) return checked;
      try {
        watched.apply(checked.set);
      } catch (error) {
        return { variable: watched.cert.variable, reason: `the listener could not take it (${(error as Error).message})` };
      }
      inForce = checked.set.crl;
      return { leaf: checked.leaf, set: checked.set };
    }

    /** Checks the set in use again when a CRL it holds for later is due (a timer; `recheckPending` waits for it otherwise). */
    function schedulePending(): void {
      if (pendingTimer !== undefined) clearTimeout(pendingTimer);
      pendingTimer = undefined;
      const until = pendingUntil(inForce);
      if (until === undefined) return;
      // A second after: thisUpdate counts in whole seconds, and TLS must take the CRL by then too.
      pendingTimer = setTimeout(
        () => {
          pendingTimer = undefined;
          void loop.enqueue(() => Promise.resolve(recheckPending()));
        },
        // At most a day at a time (setTimeout takes under 25 days); an early wake-up only schedules the next.
        Math.min(Math.max(0, until - clock.now()) + 1000, 86_400_000),
      );
      pendingTimer.unref();
    }

    /**
     * Once a CRL held for later is due, checks the set in use (the text served, not the files, which may hold
     * another change) again and applies it: the CRL kept for its CA is dropped, the gauges follow.
     */
    function recheckPending(): void {
      const until = pendingUntil(inForce);
      if (until === undefined || inForce === recheckFailed) return;
      if (clock.now() < until) {
        if (pendingTimer === undefined) schedulePending();
        return;
      }
      const before = inForce?.authorities ?? [];
      const reading: Reading = new Map(files.map((part): [WatchedPart, PartRead] => [part, { text: served.get(part) ?? part.pem }]));
      const outcome = tryApply(reading);
      if (!("leaf" in outcome)) {
        // Another CRL of the set expired meanwhile (its alert says so). TLS still holds the CRL that is due and uses it.
        recheckFailed = inForce;
        logger.debug({ certificate: role, variable: outcome.variable, reason: outcome.reason }, "the certificate set in use no longer passes its checks");
        return;
      }
      for (const { subject, pending } of before) {
        if (pending === undefined || outcome.set.crl?.authorities.find((now) => now.subject === subject)?.pending !== undefined) continue;
        const at = new Date(pending.thisUpdate).toISOString();
        logger.info(
          { certificate: role, issuer: subject, this_update: at },
          `the ${pending.kept ? "new " : ""}CRL of ${subject} (TLS_CLIENT_CRL) is in force now (its thisUpdate ${at} has passed)` +
            (pending.kept ? ": the CRL kept for that CA until then is dropped" : ": client certificates of that CA verify again"),
        );
      }
      if (outcome.set.crl !== undefined) reportClientCrlExpiry(outcome.set.crl, { metrics, logger, clock, reloadable: watched.crl?.path !== undefined });
      schedulePending();
    }

    /** The leaf certificate served now (undefined only if it no longer parses, which its checks rule out). */
    function servedLeaf(): X509Certificate | undefined {
      try {
        return new X509Certificate(served.get(watched.cert) ?? watched.cert.pem);
      } catch {
        return undefined;
      }
    }

    function applied(changed: readonly WatchedPart[], leaf: X509Certificate, set: CertificateSet): void {
      const names = changed.map((part) => part.variable);
      const cert = served.get(watched.cert) ?? watched.cert.pem;
      metrics.tlsCertificateReloads.inc({ certificate: role, result: "applied" });
      metrics.tlsCertificateLastReloadSuccessful.set({ certificate: role }, 1);
      logger.info(
        { certificate: role, changed: names, subject: subjectOf(leaf), not_after: leaf.validToDate.toISOString() },
        `${names.join(", ")} reloaded: new connections use ${names.length > 1 ? "them" : "it"}, connections already open keep what they negotiated`,
      );
      reportCertificateExpiry(role, cert, { metrics, logger, clock, reloadable: watched.cert.path !== undefined });
      if (set.crl !== undefined) reportClientCrlExpiry(set.crl, { metrics, logger, clock, reloadable: watched.crl?.path !== undefined });
      schedulePending();
    }

    return {
      files,
      check,
      stop: () => {
        settler.stop();
        if (pendingTimer !== undefined) clearTimeout(pendingTimer);
        pendingTimer = undefined;
      },
    };
  }
}

/** A digest of what was read: the same files give the same digest, whatever the time or the order of reading. */
function digestOf(reading: Reading): string {
  const hash = createHash("sha256");
  for (const [part, read] of reading) {
    hash.update(`${part.variable}\0`);
    hash.update("text" in read ? `=${read.text}` : `!${(read.error as NodeJS.ErrnoException).code ?? "error"}`);
    hash.update("\0");
  }
  return hash.digest("hex");
}
