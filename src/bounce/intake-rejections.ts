/**
 * Why the bounce intake refused something: a closed set, shared by the
 * intake (which reports each refusal) and the metrics (which count them by
 * reason). Kept apart from intake-server.ts so that the metrics do not load
 * smtp-server in a process without an intake.
 */

/**
 * - `rate_limited`: a connection over BOUNCE_CONNECTIONS_PER_MINUTE from one
 *   peer (IPv4 address or IPv6 /64), 421.
 * - `too_many_clients`: a connection over the simultaneous-connection cap, 421.
 * - `tls_required`: MAIL before STARTTLS with BOUNCE_TLS_REQUIRED, 530.
 * - `bad_recipient`: a recipient that is not `bounce+<message id>@<bounce domain>`, 550.
 * - `too_many_recipients`: a recipient past the few a bounce can have, 452.
 * - `too_large`: a message over the size limit, 552.
 * - `unreadable`: the message stream failed mid-DATA, 451.
 * - `record_failed`: storage could not record the report in time, 451 (the sender retries).
 * - `error`: an unexpected failure of the intake itself, 451.
 */
export const intakeRejectionReasons = [
  "rate_limited",
  "too_many_clients",
  "tls_required",
  "bad_recipient",
  "too_many_recipients",
  "too_large",
  "unreadable",
  "record_failed",
  "error",
] as const;
export type IntakeRejectionReason = (typeof intakeRejectionReasons)[number];
