/**
 * What the delivery code tells an onlooker (metrics, traces) as a message
 * moves: the seam that keeps OpenTelemetry and Prometheus out of delivery/.
 * The implementation lives in src/telemetry/delivery-telemetry.ts.
 *
 * Calls happen in the async context of the work they describe (the request
 * that dispatched the message, for its send), so an implementation can take
 * the active trace from there. Implementations must be cheap and must not
 * throw; callers do not guard them.
 */
import type { AttemptRecord, DeliveryRecord } from "./record.js";

/** Follows one message's send, from its first attempt to the final verdict. */
export interface SendObservation {
  /** Attempt `number` (1 for the first) is about to be handed to the transport. */
  attemptStarted(number: number): void;
  /**
   * A pooled connection took the attempt off the transport's queue: its wait
   * for a free connection is over, and what follows (connecting, greeting, TLS
   * and AUTH on a new connection, then the transaction) is the relay's time.
   * At most once per attempt, never for one that got no connection; may come
   * after attemptWithdrawn (a connection freed after drain() gave it up).
   */
  attemptTaken(): void;
  /** The attempt ended with the relay's answer (or a connection failure). */
  attemptFinished(attempt: AttemptRecord): void;
  /**
   * The attempt was given up while it still waited for a pooled connection
   * (the sender stopped): nothing of it reached the relay, and no attempt is
   * recorded for it.
   */
  attemptWithdrawn(): void;
  /** After attempt `number` failed transiently, the next one starts in `delayMs`. */
  retryScheduled(number: number, delayMs: number): void;
  /** No attempt will follow; `record` is the last state written (ACCEPTED, FAILED...). */
  finished(record: DeliveryRecord): void;
  /**
   * Fields for a log line about this send (`"send"`: its failure, its record
   * writes) or about its latest attempt (`"attempt"`: the attempt's outcome,
   * the relay's reply; the send's before the first attempt), to spread into
   * the line: the `trace_id` and `span_id` of that span, so that the line
   * can be found beside it in a trace. Without them a line names the active
   * span, the request's. `{}` when not traced. Stays valid after the span
   * ended (lines about an attempt are written once it has).
   */
  logFields(of: "send" | "attempt"): Readonly<Record<string, string>>;
}

export interface DeliveryObserver {
  /**
   * A stored record (QUEUED, or SENDING when it was stored ready for its
   * first attempt, as the OTP service does) is dispatched; `relay` is the transport's
   * `host:port`. Called once per message, in the dispatching request's context.
   */
  sendStarted(record: DeliveryRecord, relay: string): SendObservation;
  /**
   * A record was written in a new state (`record.state`), by the dispatcher
   * or by anyone else who moves records (bounce intake).
   */
  stateChanged(record: DeliveryRecord): void;
}

const noLogFields: Readonly<Record<string, string>> = Object.freeze({});

const noopSend: SendObservation = {
  attemptStarted: () => undefined,
  attemptTaken: () => undefined,
  attemptFinished: () => undefined,
  attemptWithdrawn: () => undefined,
  retryScheduled: () => undefined,
  finished: () => undefined,
  logFields: () => noLogFields,
};

/** Observes nothing: the default. */
export const noopDeliveryObserver: DeliveryObserver = {
  sendStarted: () => noopSend,
  stateChanged: () => undefined,
};
