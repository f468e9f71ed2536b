/**
 * The dispatcher: runs the SMTP attempts of one message, records each one,
 * and retries where retrying helps. Transient failures (connection errors,
 * timeouts, 4xx) are retried with exponential backoff and full jitter,
 * never past the code's expiry; permanent refusals (5xx) and rejected
 * credentials stop at once, and so does an attempt the relay had whole and
 * never answered (its outcome unknown: a retry could send a second mail).
 * The caller gets an answer within a wait budget; attempts still running
 * then continue in the background and land in the store.
 */
import { monotonicOf, type Clock } from "../clock.js";
import type { Logger } from "../logger.js";
import type { OtpStore } from "../store/types.js";
import { noopDeliveryObserver, type DeliveryObserver, type SendObservation } from "./observer.js";
import { terminalSendStates, type AttemptRecord, type DeliveryRecord } from "./record.js";
import {
  SmtpSendError,
  type OutgoingMail,
  type SmtpAcceptance,
  type SmtpTransport,
  type Withdrawal,
} from "./smtp-transport-types.js";

/** The transport's own error codes for an attempt that ended without the relay having a say (see reportHealth). */
const noEvidenceAboutTheRelay: ReadonlySet<string> = new Set(["EEXPIRED", "ESTOPPED", "EINTERNAL"]);

/** How long drain() waits for the FAILED writes it makes after its grace period. */
const finalWriteGraceMs = 1000;

/** Backoff between tries of a final record write that failed: from the first to the cap, doubling. */
const rewriteFirstDelayMs = 100;
const rewriteMaxDelayMs = 2000;

/** What one attempt says about the relay: up, unreachable, or refusing our credentials. */
export type RelayHealthEvent = "ok" | "down" | "auth_failed";

export interface DeliveryServiceOptions {
  /** Where records are written (only `putRecord` is used). */
  readonly store: Pick<OtpStore, "putRecord">;
  readonly transport: SmtpTransport;
  /**
   * Timestamps of records and attempts (`now`) and attempt durations
   * (`monotonic`). Sleeps use real timers.
   */
  readonly clock: Clock;
  readonly logger: Logger;
  /** Attempts per message, the first included (>= 1). */
  readonly maxAttempts: number;
  /** Backoff before retry n is `random() × min(retryMaxDelayMs, retryBaseDelayMs × 2^(n-1))`. */
  readonly retryBaseDelayMs: number;
  readonly retryMaxDelayMs: number;
  /** How long dispatch() waits for the relay's verdict before answering with the record as it stands. */
  readonly waitBudgetMs: number;
  /** TTL of every record write. */
  readonly recordTtlMs: number;
  /**
   * How long a message's final record (ACCEPTED, FAILED) is tried again when
   * writing it failed (Redis restarting, failing over): default 60 s. Without
   * it the store would keep SENDING for a message the relay answered, and
   * GetDeliveryStatus would later call it abandoned.
   */
  readonly recordRewriteMs?: number;
  /** Jitter source in [0, 1); Math.random by default. */
  readonly random?: () => number;
  /**
   * Told after every attempt: "ok" when the relay replied at all (2xx, 4xx or
   * 5xx), "down" when it could not be reached or talked to (a relay that had
   * the whole message and gave no final reply included: an unanswered attempt
   * counts against the relay as any timeout does), "auth_failed"
   * when it rejected the service's credentials. Not told of an attempt given
   * up because its code expired before the relay took it (`EEXPIRED`) or the
   * sender stopped (`ESTOPPED`), nor of one our own code broke
   * (`EINTERNAL`, logged as an error and counted as result="internal"):
   * none of them says anything about the relay.
   */
  readonly onRelayHealth?: (event: RelayHealthEvent) => void;
  /** Told of every send, attempt and state change (metrics, traces); nothing by default. */
  readonly observer?: DeliveryObserver | undefined;
}

/**
 * A mail whose text states how long its code stays valid, made again for
 * each retry, and for any attempt that waited for a pooled connection: a
 * retry starts seconds or minutes after the first attempt, an attempt may
 * wait minutes behind a slow relay, and a text made earlier would promise
 * time the code no longer has.
 */
export interface RetryMail {
  /**
   * The least validity an attempt may start (or leave the queue) with. With
   * less, it does not (the message fails): its text could not state what is
   * left (the OTP mail states whole minutes, so one minute).
   */
  readonly minRemainingMs: number;
  /**
   * The mail for an attempt that starts, or leaves the queue, with
   * `remainingMs` of the code's validity left: the mail made last (the same
   * object) while what its text states is still true, so that nothing is
   * rendered again for nothing.
   */
  make(remainingMs: number): OutgoingMail;
}

/**
 * How long after its mail was made an attempt leaves the transport's queue
 * with that mail as it is, whatever it states: the fast path, where a
 * connection is free at once, renders nothing again (and a text stating
 * whole minutes is not made to say 9 instead of 10 by the milliseconds a
 * send takes to reach a connection).
 */
const departureGraceMs = 1000;

export interface DispatchOptions {
  /** When the caller must have its answer (wall clock, `Date.now()` ms): its deadline. */
  readonly answerBy?: number | undefined;
  /** Makes the mail of each retry; without it every attempt sends `mail` as given, until the code expires. */
  readonly retryMail?: RetryMail | undefined;
}

export interface DeliveryService {
  /**
   * Sends `mail`, whose `record` is already stored: QUEUED, or SENDING with
   * no attempt when the caller stored it ready for the first attempt (then
   * that attempt starts without another write). Resolves
   * with the latest record as soon as the relay accepted or refused for good,
   * or after the wait budget (then SENDING or RETRYING, with attempts going
   * on in the background), or at `options.answerBy` when that comes first.
   * Never rejects.
   */
  dispatch(record: DeliveryRecord, mail: OutgoingMail, options?: DispatchOptions): Promise<DeliveryRecord>;
  /**
   * Stops sending. An attempt in progress may finish; a message waiting for
   * its retry is marked FAILED at once; after `graceMs` whatever is still in
   * flight is marked FAILED: an attempt still waiting for a pooled
   * connection as not sent (and it is withdrawn should a connection take it
   * later), one on a connection whose relay stalled before the end of its
   * data was let go (at MAIL FROM, RCPT TO, DATA) as not sent too (it is
   * stopped so that this end never goes, whatever the relay does later),
   * one the relay may have whole as `abandoned` (its answer unknown, unless the
   * relay answers within the last writes: then ACCEPTED, or FAILED with its
   * refusal, a 4xx as not retried because the sender stopped), and a final
   * record still failing to be written gets one last try. The last writes
   * take at most a second. Later dispatches fail without an attempt.
   */
  drain(graceMs: number): Promise<void>;
  /**
   * Schedules no more retries: a message waiting for its retry is marked
   * FAILED at once (its caller, if still waiting, hears so), and one whose
   * attempt fails transiently from now on is not retried. First attempts
   * still go. Called when shutdown begins, before calls in flight are waited
   * for: otherwise a caller waiting on a retry would be told RETRYING for a
   * message that drain() then fails without another attempt.
   */
  stopRetries(): void;
  /** Messages not finished: attempts still running, or a final record still being written again. */
  inFlight(): number;
}

/** One message being dispatched. */
interface Job {
  /** The latest state of the record, written or about to be. */
  record: DeliveryRecord;
  /** Set when drain() gave up on it: nothing about it is written any more. */
  abandoned: boolean;
  /** When the attempt now with the transport started; undefined between attempts. */
  attemptStartedAt: AttemptStart | undefined;
  /**
   * Set when the attempt now with the transport left its queue for a connection to the relay (or was
   * handed to nodemailer's own builder, which queues it out of sight): from then on the relay may have it.
   */
  departed: boolean;
  /**
   * Set when the relay may have the whole message of the attempt now with the transport: the end of its data
   * was let go to the relay's connection (SendOptions.onEndOfData). Until then drain() can stop it for good.
   */
  endOfData: boolean;
  /** Stops the attempt now with the transport before the end of its data goes (SendOptions.signal); undefined between attempts. */
  stop: AbortController | undefined;
  /**
   * When a pooled connection took the attempt now with the transport (monotonic ms, SendOptions.onTaken): its
   * wait for a connection ended then. Undefined while it waits, and between attempts.
   */
  attemptTakenAt: number | undefined;
  /** Set when drain() recorded the attempt in flight as abandoned, the relay's answer unknown. */
  answerUnknown: boolean;
  /** Wakes a backoff sleep early (drain); undefined when not sleeping. */
  wake: (() => void) | undefined;
  /** Follows this send for metrics and traces. */
  readonly observation: SendObservation;
  /** Record writes, in order. */
  writes: Promise<void>;
  /** The latest record whose write failed, until a later write succeeds. */
  unwritten: DeliveryRecord | undefined;
  /** Set when the attempts are over: what remains is writing the last record. */
  attemptsOver: boolean;
  /** Settles when the job has finished (never rejects). */
  done: Promise<void>;
}

/** When an attempt started: clock ms for its record, and monotonic ms for its duration. */
interface AttemptStart {
  readonly wall: number;
  readonly monotonic: number;
}

/** An attempt's times as the "smtp attempt" log line gives them (milliseconds). */
interface AttemptTimes {
  readonly duration_ms: number;
  readonly pool_wait_ms: number;
}

type AttemptResult =
  | { readonly ok: true; readonly acceptance: SmtpAcceptance }
  | { readonly ok: false; readonly error: SmtpSendError };

export function createDeliveryService(options: DeliveryServiceOptions): DeliveryService {
  const { store, transport, clock } = options;
  // Durations come from the monotonic clock: a wall-clock step (NTP) during an
  // attempt must not record it as lasting a negative time, or hours.
  const monotonic = monotonicOf(clock);
  const logger = options.logger.child({ component: "delivery" });
  const random = options.random ?? Math.random;
  const observer = options.observer ?? noopDeliveryObserver;
  if (!Number.isInteger(options.maxAttempts) || options.maxAttempts < 1) {
    throw new Error(`delivery: maxAttempts must be a positive integer, got ${options.maxAttempts}`);
  }
  if (options.retryBaseDelayMs < 0 || options.retryMaxDelayMs < options.retryBaseDelayMs) {
    throw new Error("delivery: need 0 <= retryBaseDelayMs <= retryMaxDelayMs");
  }

  const jobs = new Set<Job>();
  let stopping = false;
  /** Set when drain()'s last writes are over: nothing about a job it gave up is written after that. */
  let finalWritesOver = false;
  /** Set by stopRetries() (and implied by stopping): no retry is scheduled or started any more. */
  let retriesStopped = false;

  function write(job: Job, next: DeliveryRecord): Promise<void> {
    if (job.abandoned) return job.writes;
    return append(job, next);
  }

  /** Writes `next` after the job's earlier writes, whatever drain() decided: write() is the guarded way. */
  function append(job: Job, next: DeliveryRecord): Promise<void> {
    if (next.state !== job.record.state) observer.stateChanged(next);
    job.record = next;
    // Chained, so a slow write can never be overtaken by a later state.
    job.writes = job.writes.then(async () => {
      try {
        await store.putRecord(next, options.recordTtlMs);
        job.unwritten = undefined;
      } catch (error) {
        job.unwritten = next;
        logger.error({ ...job.observation.logFields("send"), err: error, message_id: next.messageId, state: next.state }, "could not write delivery record");
      }
    });
    return job.writes;
  }

  /**
   * Tries the job's last record again while its write keeps failing, with
   * backoff, for at most recordRewriteMs (or until drain() gives up on it).
   * Every write is the whole record, so a late one is as good as on time.
   */
  async function rewriteLast(job: Job): Promise<void> {
    // Monotonic: a wall-clock step must neither cut the rewrites short nor stretch them for hours.
    const deadline = monotonic() + (options.recordRewriteMs ?? 60_000);
    let delay = rewriteFirstDelayMs;
    let tries = 0;
    while (job.unwritten !== undefined && !job.abandoned) {
      if (monotonic() + delay > deadline) {
        logger.error(
          { ...job.observation.logFields("send"), message_id: job.record.messageId, state: job.record.state, tries },
          "gave up writing delivery record: GetDeliveryStatus shows an earlier state",
        );
        return;
      }
      await new Promise<void>((resolve) => setTimeout(resolve, delay).unref());
      delay = Math.min(delay * 2, rewriteMaxDelayMs);
      const record = job.unwritten;
      if (record === undefined || job.abandoned) return;
      tries++;
      try {
        await store.putRecord(record, options.recordTtlMs);
        if (job.unwritten === record) job.unwritten = undefined;
        logger.info(
          { ...job.observation.logFields("send"), message_id: record.messageId, state: record.state, tries },
          "delivery record written after storage came back",
        );
      } catch {
        // Still down: the next try says so if it is the last.
      }
    }
  }

  /**
   * Records `job` FAILED for `reason`, and logs so; `attemptTimes` (see
   * timesOf) when the attempt in flight was given up unrecorded at shutdown.
   */
  function fail(
    job: Job,
    reason: string,
    attempts: readonly AttemptRecord[] = job.record.attempts,
    attemptTimes?: AttemptTimes,
  ): Promise<void> {
    logger.warn(
      { ...job.observation.logFields("send"), message_id: job.record.messageId, attempts: attempts.length, reason, ...attemptTimes },
      "message failed",
    );
    return write(job, { ...job.record, state: "FAILED", attempts, failureReason: reason, updatedAt: clock.now() });
  }

  /**
   * Gives up on the attempt in flight (drain's grace ran out while the relay
   * had the message): recorded as an abandoned attempt, with its start and no
   * reply, in a FAILED record whose outcome is unknown. Not a relay failure:
   * the relay did not fail, we stopped; counted and logged as abandoned.
   */
  function abandon(job: Job, started: AttemptStart): Promise<void> {
    const now = clock.now();
    const startedAt = started.wall;
    const number = job.record.attempts.length + 1;
    const durationMs = Math.round(monotonic() - started.monotonic);
    const attempt: AttemptRecord = {
      number,
      startedAt,
      durationMs,
      poolWaitMs: poolWaitOf(job, started.monotonic, durationMs),
      outcome: "abandoned",
      replyCode: 0,
      enhancedStatus: "",
      replyText: "no reply: the sender stopped while waiting for the relay's answer",
      errorCode: "",
    };
    const reason =
      `the sender stopped while attempt ${number} was in progress; ` +
      "the relay's answer is unknown (it may still have accepted the message)";
    job.observation.attemptFinished(attempt);
    logger.warn(
      {
        ...job.observation.logFields("attempt"),
        message_id: job.record.messageId,
        attempt: number,
        attempts: number,
        outcome: "abandoned",
        reason,
        duration_ms: durationMs,
        pool_wait_ms: attempt.poolWaitMs,
      },
      "message abandoned at shutdown: the relay's answer is unknown",
    );
    const attempts = [...job.record.attempts, attempt];
    job.answerUnknown = true;
    return write(job, { ...job.record, state: "FAILED", attempts, failureReason: reason, updatedAt: now });
  }

  /**
   * Gives up on the attempt in flight while it still waited for a pooled
   * connection (drain's grace ran out behind a slow relay): nothing of it
   * reached the relay, so the message failed, with no attempt to record,
   * and a retry may send it. From now on the departure hook withdraws it,
   * should a connection take it before the pool is closed.
   */
  function withdraw(job: Job, started: AttemptStart): Promise<void> {
    job.observation.attemptWithdrawn();
    const reason =
      job.record.attempts.length === 0
        ? "the sender stopped before the message reached the relay (it waited for a connection); nothing was sent"
        : `the sender stopped before the retry reached the relay (it waited for a connection); nothing was sent${lastFailure(job.record)}`;
    return fail(job, reason, job.record.attempts, timesOf(job, started));
  }

  /**
   * Gives up on the attempt in flight on a connection whose relay stalled
   * before the end of the message's data was let go (at MAIL FROM, RCPT TO,
   * or reading the data), drain() having stopped it so that this end never
   * goes: the relay cannot take the message, so it failed, not sent, with no
   * attempt recorded (the relay had no message to answer for), and a retry
   * may send it. Logged and counted as a withdrawn send.
   */
  function stopBeforeEndOfData(job: Job, started: AttemptStart): Promise<void> {
    job.observation.attemptWithdrawn();
    const number = job.record.attempts.length + 1;
    return fail(
      job,
      `the sender stopped before the relay had the whole message (attempt ${number} was stopped before the end of its data ` +
        `was sent); nothing was delivered${lastFailure(job.record)}`,
      job.record.attempts,
      timesOf(job, started),
    );
  }

  /** The ACCEPTED record of `job` after the relay's `acceptance`, with `attempts`. */
  function acceptedRecord(job: Job, attempts: readonly AttemptRecord[], acceptance: SmtpAcceptance): DeliveryRecord {
    return {
      ...job.record,
      state: "ACCEPTED",
      attempts,
      relayReply: {
        relay: acceptance.relay,
        text: acceptance.text,
        queueId: acceptance.queueId,
        acceptedAt: clock.now(),
        dsnRequested: acceptance.dsnRequested,
      },
      failureReason: undefined,
      updatedAt: clock.now(),
    };
  }

  function reportHealth(result: AttemptResult): void {
    // Given up because its code expired, or had too little left, before the relay took it (withdrawn as it
    // left the pool's queue behind a slow relay, or timed out by its expiry): the message's clock ran out,
    // the relay did not fail. Likewise a send the sender stopped, or one our own code broke (a bug, logged
    // as an error where it happened). Counted as "down" any of them would take an instance whose relay
    // answers out of rotation.
    if (!result.ok && noEvidenceAboutTheRelay.has(result.error.errorCode)) return;
    const event: RelayHealthEvent | undefined = result.ok
      ? "ok"
      : result.error.kind === "auth"
        ? "auth_failed"
        : // A relay that refuses STARTTLS, or the session itself, for good replied, but is as unusable as one that is down.
          result.error.replyCode > 0 &&
            !(result.error.kind === "permanent" && (result.error.errorCode === "ETLS" || result.error.errorCode === "ESESSION"))
          ? "ok"
          : "down";
    try {
      options.onRelayHealth?.(event);
    } catch (error) {
      logger.error({ err: error }, "onRelayHealth listener threw");
    }
  }

  /**
   * What an attempt sends when it leaves the transport's queue: nothing once
   * its code has expired (or, with `retryMail`, has too little left for its
   * text to state); its mail as made when it leaves within departureGraceMs
   * of `madeAt`; otherwise the mail made for what the code has left then.
   */
  function departure(job: Job, expiresAt: number, madeAt: number, retryMail: RetryMail | undefined) {
    return (mail: OutgoingMail): OutgoingMail | Withdrawal => {
      // drain() gave it up as not sent while it waited, and its record says so: it must not go now.
      if (job.abandoned) {
        return { withdrawn: "the sender stopped while the message waited for a connection to the relay; nothing was sent", errorCode: "ESTOPPED" };
      }
      const now = clock.now();
      if (now >= expiresAt) return { withdrawn: "the code expired while the message waited for a connection to the relay; nothing was sent" };
      if (retryMail === undefined || now - madeAt < departureGraceMs) {
        job.departed = true;
        return mail;
      }
      const remainingMs = expiresAt - now;
      if (remainingMs < retryMail.minRemainingMs) {
        return {
          withdrawn:
            `the code had less than ${Math.ceil(retryMail.minRemainingMs / 1000)} s of validity left when the message got a ` +
            "connection to the relay, too little for its email to state; nothing was sent",
        };
      }
      job.departed = true;
      return retryMail.make(remainingMs);
    };
  }

  /**
   * One SMTP attempt, given up when the code expires: an expired code is
   * never handed to the relay. `madeAt`: when `mail`'s text was made.
   */
  async function attempt(
    job: Job,
    mail: OutgoingMail,
    expiresAt: number,
    madeAt: number,
    retryMail: RetryMail | undefined,
  ): Promise<AttemptResult> {
    try {
      const atDeparture = departure(job, expiresAt, madeAt, retryMail);
      // Where the wait for a connection ends and the relay's time starts (metrics).
      const onTaken = (): void => {
        job.attemptTakenAt ??= monotonic();
        job.observation.attemptTaken();
      };
      const onEndOfData = (): void => {
        job.endOfData = true;
      };
      const stop = new AbortController();
      job.stop = stop;
      return {
        ok: true,
        acceptance: await transport.send(mail, {
          withinMs: expiresAt - clock.now(),
          atDeparture,
          logFields: job.observation.logFields("attempt"),
          onTaken,
          onEndOfData,
          signal: stop.signal,
        }),
      };
    } catch (error) {
      if (error instanceof SmtpSendError) return { ok: false, error };
      // The transport promises SmtpSendError only; anything else is a bug
      // there, treated like a failed connection so the message still retries.
      logger.error({ ...job.observation.logFields("attempt"), err: error }, "SMTP transport failed with an unexpected error");
      return { ok: false, error: new SmtpSendError("transient", "internal error in the SMTP transport", 0, "", "EINTERNAL") };
    }
  }

  /**
   * The log fields of the attempt in flight, started at `started`, given up at shutdown before it ended: how
   * long it has run, and how much of that it waited for a pooled connection (the rest was the relay's).
   */
  function timesOf(job: Job, started: AttemptStart): AttemptTimes {
    const durationMs = Math.round(monotonic() - started.monotonic);
    return { duration_ms: durationMs, pool_wait_ms: poolWaitOf(job, started.monotonic, durationMs) };
  }

  /** How much of an attempt that started at `startedMonotonic` and lasted `durationMs` was the wait for a pooled connection. */
  function poolWaitOf(job: Job, startedMonotonic: number, durationMs: number): number {
    // Never taken: all of it was the wait (its code expired in the queue, the transport was closed...).
    if (job.attemptTakenAt === undefined) return durationMs;
    return Math.min(durationMs, Math.max(0, Math.round(job.attemptTakenAt - startedMonotonic)));
  }

  /** Backoff before the attempt after attempt `n`: full jitter over a capped exponential. */
  function backoff(n: number): number {
    const ceiling = Math.min(options.retryMaxDelayMs, options.retryBaseDelayMs * 2 ** (n - 1));
    return Math.floor(ceiling * random());
  }

  /** Sleeps `ms`; resolves false when drain() woke it early. */
  function sleep(job: Job, ms: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      // drain() or stopRetries() may have come while the RETRYING write was in progress.
      if (stopping || retriesStopped) {
        resolve(false);
        return;
      }
      const timer = setTimeout(() => {
        job.wake = undefined;
        resolve(true);
      }, ms);
      // The process lives for its servers, not for a pending retry: shutdown goes through drain().
      timer.unref();
      job.wake = () => {
        clearTimeout(timer);
        job.wake = undefined;
        resolve(false);
      };
    });
  }

  async function run(job: Job, firstMail: OutgoingMail, retryMail: RetryMail | undefined): Promise<void> {
    const { relay } = transport;
    const { messageId, expiresAt } = job.record;
    // A retry must leave time for its text to state: none starts with less than this left.
    const minRemainingMs = retryMail?.minRemainingMs ?? 0;
    let mail = firstMail;
    // The first mail's text was made for the whole ttl, counted from the record's creation.
    let madeAt = job.record.createdAt;
    for (;;) {
      const number = job.record.attempts.length + 1;
      if (stopping || (retriesStopped && number > 1)) {
        await fail(job, number === 1 ? "the sender stopped before the first attempt" : stoppedBeforeRetry(job.record));
        return;
      }
      if (clock.now() >= expiresAt) {
        await fail(job, expiredBeforeSending(job.record));
        return;
      }
      if (number > 1 && retryMail !== undefined) {
        // Made now, from what is left now: the text promises no more than the code has.
        const remainingMs = expiresAt - clock.now();
        if (remainingMs < minRemainingMs) {
          await fail(job, tooLittleLeftForRetry(job.record, minRemainingMs));
          return;
        }
        mail = retryMail.make(remainingMs);
        madeAt = clock.now();
      }

      // A record stored as SENDING with no attempt yet (the OTP service hands
      // over its records so) is already what this write would say: skip it,
      // a round trip saved before every first attempt.
      if (!(job.record.state === "SENDING" && job.record.attempts.length === 0)) {
        await write(job, { ...job.record, state: "SENDING", updatedAt: clock.now() });
        if (job.abandoned) return;
      }
      const startedAt = clock.now();
      const startedMonotonic = monotonic();
      job.observation.attemptStarted(number);
      job.attemptStartedAt = { wall: startedAt, monotonic: startedMonotonic };
      job.departed = false;
      job.endOfData = false;
      job.attemptTakenAt = undefined;
      const result = await attempt(job, mail, expiresAt, madeAt, retryMail);
      job.attemptStartedAt = undefined;
      job.stop = undefined;
      const durationMs = Math.round(monotonic() - startedMonotonic);
      const poolWaitMs = poolWaitOf(job, startedMonotonic, durationMs);
      const attemptRecord = toAttemptRecord(number, startedAt, durationMs, poolWaitMs, result);
      if (job.abandoned) {
        if (!result.ok && result.error.replyCode > 0 && job.answerUnknown && !finalWritesOver) {
          // A refusal is the relay's answer as much as an acceptance is: it goes in over the guess the same way.
          // A 5xx fails the message for good (its key kept, as for any refusal); a 4xx would have been retried
          // but for the shutdown: the relay did not take the message, so nothing keeps a retry from sending it.
          const { error } = result;
          logger.warn(
            {
              ...job.observation.logFields("attempt"),
              message_id: messageId,
              attempt: number,
              outcome: attemptRecord.outcome,
              reply_code: attemptRecord.replyCode,
              enhanced_status: attemptRecord.enhancedStatus,
              duration_ms: durationMs,
              pool_wait_ms: poolWaitMs,
            },
            "the relay refused a message given up at shutdown: recorded FAILED with its reply",
          );
          const reason =
            error.kind === "transient"
              ? `the relay ${relay} refused the message for now ("${error.replyText}"); not retried because the sender stopped`
              : refusalReason(relay, error);
          await append(job, {
            ...job.record,
            state: "FAILED",
            attempts: [...job.record.attempts.slice(0, number - 1), attemptRecord],
            failureReason: reason,
            updatedAt: clock.now(),
          });
          return;
        }
        if (result.ok && job.answerUnknown && !finalWritesOver) {
          // drain() recorded the relay's answer as unknown, and here it is, within drain's last writes (the pool
          // is closed after them): the truth goes in over the guess, behind it in the job's writes.
          logger.warn(
            {
              ...job.observation.logFields("attempt"),
              message_id: messageId,
              attempt: number,
              reply_code: attemptRecord.replyCode,
              queue_id: result.acceptance.queueId,
              duration_ms: durationMs,
              pool_wait_ms: poolWaitMs,
            },
            "the relay accepted a message given up at shutdown: recorded ACCEPTED",
          );
          await append(job, acceptedRecord(job, [...job.record.attempts.slice(0, number - 1), attemptRecord], result.acceptance));
          return;
        }
        // drain() recorded, logged and counted this attempt as abandoned or not sent, and the store keeps that. Its end
        // here is the transport closing under it (or withdrawing it), not the relay's doing: no relay health, no failure counted.
        logger.warn(
          {
            ...job.observation.logFields("attempt"),
            message_id: messageId,
            attempt: number,
            outcome: attemptRecord.outcome,
            error_code: attemptRecord.errorCode,
            duration_ms: durationMs,
            pool_wait_ms: poolWaitMs,
          },
          "attempt finished after the sender stopped",
        );
        return;
      }
      reportHealth(result);
      job.observation.attemptFinished(attemptRecord);
      const attempts = [...job.record.attempts, attemptRecord];
      // The attempt's span, not the request's (the active one): the line sits beside its attempt in the trace.
      logger.info(
        {
          ...job.observation.logFields("attempt"),
          message_id: messageId,
          attempt: number,
          outcome: attemptRecord.outcome,
          reply_code: attemptRecord.replyCode,
          enhanced_status: attemptRecord.enhancedStatus,
          error_code: attemptRecord.errorCode,
          relay,
          duration_ms: durationMs,
          // Of duration_ms, the wait for a free pooled connection: the rest is the relay's time.
          pool_wait_ms: poolWaitMs,
        },
        "smtp attempt",
      );

      if (result.ok) {
        await write(job, acceptedRecord(job, attempts, result.acceptance));
        return;
      }

      const { error } = result;
      if (error.kind === "auth") {
        logger.error(
          { ...job.observation.logFields("attempt"), message_id: messageId, relay, reply: error.replyText },
          "the SMTP relay rejected the service's credentials: fix the SMTP URL's user and password",
        );
        await fail(job, refusalReason(relay, error), attempts);
        return;
      }
      if (error.kind === "permanent") {
        await fail(job, refusalReason(relay, error), attempts);
        return;
      }
      if (error.kind === "unanswered") {
        // The relay may have taken it: a second attempt could make a second mail (with a code the first one's
        // reader is not told is stale). Never retried, whatever attempts and time are left.
        logger.warn(
          { ...job.observation.logFields("attempt"), message_id: messageId, attempt: number, error_code: error.errorCode, relay },
          "the relay had the whole message and gave no final reply: whether it took it is unknown, so it is not sent again",
        );
        await fail(
          job,
          `the relay ${relay} had the whole message and gave no final reply, so whether it took it is unknown: the mail may ` +
            `still arrive, and it is not sent again (attempt ${number}: "${error.replyText}")`,
          attempts,
        );
        return;
      }

      // Transient: retry if attempts, time and the process allow.
      if (number >= options.maxAttempts) {
        await fail(job, `gave up after ${number} attempts; the last failed with: "${error.replyText}"`, attempts);
        return;
      }
      const delay = backoff(number);
      if (clock.now() + delay >= expiresAt) {
        await fail(job, expiredBeforeSending({ ...job.record, attempts }), attempts);
        return;
      }
      if (expiresAt - (clock.now() + delay) < minRemainingMs) {
        await fail(job, tooLittleLeftForRetry({ ...job.record, attempts }, minRemainingMs), attempts);
        return;
      }
      if (stopping || retriesStopped) {
        await fail(job, stoppedBeforeRetry({ ...job.record, attempts }), attempts);
        return;
      }
      job.observation.retryScheduled(number, delay);
      await write(job, { ...job.record, state: "RETRYING", attempts, updatedAt: clock.now() });
      if (!(await sleep(job, delay))) {
        await fail(job, stoppedBeforeRetry(job.record));
        return;
      }
    }
  }

  /**
   * Runs a job's attempts, waits for its last record write and answers the
   * caller, then tries that write again while it fails (rewriteLast); never
   * rejects. One async function rather than a catch, then and finally
   * chained per message (each a promise and a tick).
   */
  async function track(job: Job, mail: OutgoingMail, retryMail: RetryMail | undefined, answer: () => void): Promise<void> {
    try {
      try {
        try {
          await run(job, mail, retryMail);
        } catch (error) {
          logger.error({ ...job.observation.logFields("send"), err: error, message_id: job.record.messageId }, "delivery failed unexpectedly");
        }
        await job.writes;
      } finally {
        job.attemptsOver = true;
        job.observation.finished(job.record);
        // The caller hears the verdict now; a record that could not be stored is tried again behind it.
        answer();
      }
      if (job.unwritten !== undefined) await rewriteLast(job);
    } finally {
      jobs.delete(job);
    }
  }

  return {
    dispatch(record: DeliveryRecord, mail: OutgoingMail, dispatchOptions: DispatchOptions = {}): Promise<DeliveryRecord> {
      const { answerBy, retryMail } = dispatchOptions;
      const job: Job = {
        record,
        abandoned: false,
        attemptStartedAt: undefined,
        departed: false,
        endOfData: false,
        stop: undefined,
        attemptTakenAt: undefined,
        answerUnknown: false,
        wake: undefined,
        observation: observer.sendStarted(record, transport.relay),
        writes: Promise.resolve(),
        unwritten: undefined,
        attemptsOver: false,
        done: Promise.resolve(),
      };
      jobs.add(job);
      // The record as it stands when the attempts end or the wait budget runs out
      // (sooner when the caller's deadline says so).
      const waitMs =
        answerBy === undefined ? options.waitBudgetMs : Math.max(0, Math.min(options.waitBudgetMs, answerBy - Date.now()));
      return new Promise<DeliveryRecord>((resolve) => {
        const timer = setTimeout(() => resolve(job.record), waitMs);
        timer.unref();
        job.done = track(job, mail, retryMail, () => {
          clearTimeout(timer);
          resolve(job.record);
        });
      });
    },

    stopRetries(): void {
      retriesStopped = true;
      for (const job of jobs) job.wake?.();
    },

    async drain(graceMs: number): Promise<void> {
      stopping = true;
      for (const job of jobs) job.wake?.();
      const finished = await settleWithin(Promise.all([...jobs].map((job) => job.done)), graceMs);
      if (finished) return;
      const writes: Array<Promise<void>> = [];
      for (const job of jobs) {
        if (job.attemptStartedAt !== undefined) {
          // Still in the pool's queue, nothing of it sent: not sent, and it never will be (see departure). On a
          // connection, the end of its data not let go yet (the relay stalled before it): stopped here, in the same
          // tick as the look at endOfData, so that end is never written, and not sent either. Else the relay may
          // have it: its answer is unknown, unless it comes within the last writes.
          if (job.departed && !job.endOfData && job.stop !== undefined) {
            job.stop.abort();
            writes.push(stopBeforeEndOfData(job, job.attemptStartedAt));
          } else if (job.departed) {
            writes.push(abandon(job, job.attemptStartedAt));
            writes.push(job.done);
          } else {
            writes.push(withdraw(job, job.attemptStartedAt));
          }
        } else if (job.attemptsOver || terminalSendStates.has(job.record.state)) {
          // The relay answered (or the message failed for good); only storing that is left: one last try, or
          // the write still in progress (a store that hangs) waited for. Never a FAILED written over it.
          const last = job.unwritten;
          writes.push(last === undefined ? job.writes : store.putRecord(last, options.recordTtlMs).catch(() => undefined));
        } else {
          // Stuck writing its SENDING or RETRYING record (a store that hangs): no attempt was with the relay.
          writes.push(fail(job, job.record.attempts.length === 0 ? "the sender stopped before the first attempt" : stoppedBeforeRetry(job.record)));
        }
        job.abandoned = true;
        jobs.delete(job);
      }
      // Bounded too: a store that hangs must not hang shutdown. A relay that answers a message given up on
      // within it has its answer recorded (run()); after it, the pool is closed and nothing more is written.
      await settleWithin(Promise.all(writes), finalWriteGraceMs);
      finalWritesOver = true;
    },

    inFlight: () => jobs.size,
  };
}

/** Resolves true when `work` settled within `ms`, false otherwise; the timer never holds the process. */
function settleWithin(work: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    timer.unref();
    void work.finally(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Why a message failed that the relay refused for good (`error.kind` permanent or auth). */
function refusalReason(relay: string, error: SmtpSendError): string {
  if (error.kind === "auth") {
    return `the relay ${relay} rejected the service's SMTP credentials (an operator error, not the recipient's): "${error.replyText}"`;
  }
  return error.errorCode === "ESESSION"
    ? `the relay ${relay} refused the connection before the message was offered (a relay matter, not the message's): "${error.replyText}"`
    : `the relay ${relay} refused the message: "${error.replyText}"`;
}

function toAttemptRecord(number: number, startedAt: number, durationMs: number, poolWaitMs: number, result: AttemptResult): AttemptRecord {
  if (result.ok) {
    const { acceptance } = result;
    return {
      number,
      startedAt,
      durationMs,
      poolWaitMs,
      outcome: "accepted",
      replyCode: acceptance.replyCode,
      enhancedStatus: acceptance.enhancedStatus,
      replyText: acceptance.text,
      errorCode: "",
    };
  }
  const { error } = result;
  return {
    number,
    startedAt,
    durationMs,
    poolWaitMs,
    // Rejected credentials are permanent for the message: retrying cannot fix them.
    outcome: error.kind === "transient" || error.kind === "unanswered" ? error.kind : "permanent",
    replyCode: error.replyCode,
    enhancedStatus: error.enhancedStatus,
    replyText: error.replyText,
    errorCode: error.errorCode,
  };
}

function lastFailure(record: DeliveryRecord): string {
  const last = record.attempts.at(-1);
  return last === undefined ? "" : `; attempt ${last.number} failed with: "${last.replyText}"`;
}

function expiredBeforeSending(record: DeliveryRecord): string {
  return record.attempts.length === 0
    ? "the code expired before it could be sent"
    : `the code expired before it could be sent (no retry may start after expiry)${lastFailure(record)}`;
}

function tooLittleLeftForRetry(record: DeliveryRecord, minRemainingMs: number): string {
  return (
    `the code would have had less than ${Math.ceil(minRemainingMs / 1000)} s of validity left for a retry, ` +
    `too little for its email to state (no retry starts then)${lastFailure(record)}`
  );
}

function stoppedBeforeRetry(record: DeliveryRecord): string {
  return `the sender stopped before the retry${lastFailure(record)}`;
}
