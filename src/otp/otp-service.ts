/**
 * The OTP domain: SendOtp, GetDeliveryStatus and VerifyOtp over injected
 * storage, limits, rendering and delivery. Knows nothing of gRPC.
 */
import type { Clock } from "../clock.js";
import type { BacklogPlace, SendBacklog } from "../delivery/backlog.js";
import type { DeliveryService } from "../delivery/delivery-service.js";
import type { DeliveryObserver } from "../delivery/observer.js";
import { effectiveState, explain } from "../delivery/explain.js";
import type { SuppressionList } from "../bounce/suppression.js";
import { buildOtpMail } from "../delivery/message.js";
import type { OutgoingMail } from "../delivery/smtp-transport-types.js";
import { withReports } from "../delivery/reports.js";
import { suppressionReason, type DeliveryRecord, type SuppressionEntry } from "../delivery/record.js";
import { validityUnitMs, type RenderedMessage, type Renderer } from "../delivery/render.js";
import { asReplay, OtpError } from "../errors.js";
import type { PurposePolicy } from "../auth/purpose-policy.js";
import { unlimited, type SendAdmission, type SendLimiter, type SendLimitRequest, type VerifyLimiter } from "../limits/types.js";
import type { Logger } from "../logger.js";
import type { CodeSetRef, OtpStore } from "../store/types.js";
import { maskAddress } from "./address.js";
import { createRandomPool } from "../random-pool.js";
import { generateCode, messageIdTime, newMessageId, type Hasher } from "./code.js";
import type {
  CallContext,
  DeliveryStatus,
  OtpService,
  SendOtpInput,
  SendOtpResult,
  VerifyOtpInput,
  VerifyOtpResult,
} from "./types.js";
import { validateMessageId, validateSendOtp, validateVerifyOtp, type TtlRule } from "./validate.js";

export interface OtpServiceOptions {
  readonly store: OtpStore;
  readonly delivery: Pick<DeliveryService, "dispatch">;
  /**
   * Messages waiting for a pooled SMTP connection, bounded: a send that finds
   * it full is refused (RELAY_BACKLOG_FULL) before anything is spent,
   * rendered or stored. Default: no bound.
   */
  readonly backlog?: Pick<SendBacklog, "enter"> | undefined;
  readonly renderer: Renderer;
  readonly limiter: SendLimiter;
  /** Caps failed verifications beyond the per-code lock; default: no cap. */
  readonly verifyLimiter?: VerifyLimiter;
  /** Which purposes each caller may use; default: every purpose. */
  readonly purposes?: PurposePolicy;
  readonly hasher: Hasher;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The From header's display name and address. */
  readonly from: { readonly name: string; readonly address: string };
  /** Digits in a generated code. */
  readonly codeLength: number;
  readonly ttl: TtlRule;
  /** Wrong guesses per (caller, recipient, purpose) before the outstanding codes lock. */
  readonly maxFailedAttempts: number;
  /** How long delivery records are kept. */
  readonly recordRetentionMs: number;
  /** How long an idempotency key is remembered. */
  readonly idempotencyTtlMs: number;
  /** How long a code set outlives its last code, so VerifyOtp can say EXPIRED (default 1 h). */
  readonly keepExpiredMs?: number;
  /**
   * While OTP_SECRET rotates: the hasher and verify limiter of the previous
   * secret, and until when (exclusive) VerifyOtp looks for a code set made
   * under it when the current secret's finds none.
   */
  readonly previousSecret?:
    | { readonly hasher: Hasher; readonly verifyLimiter: VerifyLimiter; readonly codesUntil: number }
    | undefined;
  /** Hard-bounced recipients; checked before any limit is spent. Default: none suppressed. */
  readonly suppression?: SuppressionList | undefined;
  /**
   * Domain of the per-message envelope sender `bounce+<message_id>@<domain>`
   * (VERP), sent with a DSN request. Unset: the From address is the envelope
   * sender and no DSN is asked for.
   */
  readonly bounceDomain?: string | undefined;
  /**
   * Told the SUPPRESSED record of each send refused for a suppressed
   * recipient (the delivery telemetry counts it as a state transition, as
   * the dispatcher's records are). Default: nobody.
   */
  readonly observer?: Pick<DeliveryObserver, "stateChanged"> | undefined;
}

/**
 * How long an idempotency claim without a record may belong to a call still
 * running. A call writes its record a few storage commands after claiming
 * the key (three at most, each bounded by REDIS_COMMAND_TIMEOUT, 60 s at the
 * most); a claim older than this whose record never came belongs to a call
 * that stopped in between and could not release it (its process died, or
 * storage failed and then refused the release too).
 */
const unrecordedClaimMs = 5 * 60_000;

/** How long a code set outlives its last code by default (OtpServiceOptions.keepExpiredMs). */
export const defaultKeepExpiredMs = 3_600_000;

export function createOtpService(options: OtpServiceOptions): OtpService {
  const { store, delivery, renderer, limiter, hasher, clock, logger } = options;
  const verifyLimiter = options.verifyLimiter ?? unlimited;
  const keepExpiredMs = options.keepExpiredMs ?? defaultKeepExpiredMs;
  const random = createRandomPool();
  const setOptions = (now: number) => ({ maxFailures: options.maxFailedAttempts, now, keepExpiredMs });

  /**
   * A record and its DSNs, read in one store operation (one Redis command):
   * one round trip of waiting instead of two. The reports of an unknown (or
   * another caller's) message are read for nothing, which costs less than a
   * second round trip.
   */
  function readWithReports(messageId: string) {
    return store.getRecordWithReports(messageId);
  }

  /**
   * The first call's answer for a repeated idempotency_key, with
   * resend_available_at read from the limits as they stand now (other sends
   * may have moved it since), or the first call's error when the key keeps
   * it (a permanent refusal; a send given up at shutdown while the relay had
   * it, or that the relay had whole and never answered, which may have gone
   * out); undefined when the key may be taken over,
   * because that call sent nothing in a way a retry can fix but kept the
   * key: it stopped before writing its record and will never write it, or
   * its message failed retryably (retries used up in the background after
   * the call had answered, the call's process died mid-send so the record
   * reads abandoned, or the key could not be released).
   */
  async function replay(ctx: CallContext, messageId: string, limitRequest: SendLimitRequest): Promise<SendOtpResult | undefined> {
    // The limits are read beside the record: one round trip of waiting, not
    // two. Wasted for a replay that ends up answering something else (rare).
    const nextSend = limiter.resendAvailableAt(ctx, limitRequest).then(
      (at) => ({ at }),
      (error: unknown) => ({ error }),
    );
    const [record, reports] = await readWithReports(messageId);
    const now = clock.now();
    if (record === undefined || record.caller !== ctx.caller) {
      if (now - messageIdTime(messageId) >= unrecordedClaimMs) return undefined;
      throw asReplay(requestInProgress());
    }
    const known = withReports(record, reports);
    const state = effectiveState(known, now);
    if (state === "FAILED") {
      // A retryable failure's key is free again, as if it had been released; the failures that keep it are replayed.
      const failure = sendFailure({ ...known, state });
      if (!keepsIdempotencyKey(failure)) return undefined;
      throw asReplay(failure);
    }
    if (known.suppressedBy !== undefined) throw asReplay(suppressedError(known, causeSeenBy(ctx.caller, known.suppressedBy)));
    const limits = await nextSend;
    if ("error" in limits) {
      // Still a lower bound: since the first call answered, sends were only added to its limits.
      logger.warn(
        { err: limits.error, message_id: messageId },
        "could not read the limits for an idempotent replay; answering the first call's resend_available_at",
      );
    }
    const resendAvailableAt = Math.max(now, "at" in limits ? limits.at : (record.resendAvailableAt ?? now));
    return { messageId, state, expiresAt: known.expiresAt, resendAvailableAt, replayed: true };
  }

  /**
   * Adds a message to its recipient's list of recent messages, which support
   * looks up by address (`npm run deliveries`), kept as long as records are.
   * Never fails the send: the list is support's index, not the message's
   * truth (its record is); a failure is logged, and the store counts it.
   */
  function indexForRecipient(recipientHash: string | undefined, messageId: string): Promise<void> | undefined {
    if (recipientHash === undefined) return undefined;
    return store.addRecipientMessage(recipientHash, messageId, options.recordRetentionMs).catch((error: unknown) => {
      logger.warn({ err: error, message_id: messageId }, "could not add the message to its recipient's list: support will not find it by address");
    });
  }

  /**
   * Takes the limits of a send that is not going to happen back. A refund
   * that fails is logged (and the store counts the failed operation), never
   * thrown: the caller hears what stopped the send. Resolves false when the
   * limits still count the send.
   */
  async function refund(admission: SendAdmission, messageId: string): Promise<boolean> {
    try {
      await admission.refund();
      return true;
    } catch (error) {
      logger.warn(
        { err: error, message_id: messageId },
        "could not take back the limits of a send that did not happen: they refuse its retry until they free up",
      );
      return false;
    }
  }

  async function sendOtp(ctx: CallContext, input: SendOtpInput): Promise<SendOtpResult> {
    const request = validateSendOtp(input, options.ttl);
    authorizePurpose(ctx, request.purpose);
    const now = clock.now();
    const messageId = newMessageId(now, random);
    const set = codeSet(hasher, ctx.caller, request.recipient.key, request.purpose);
    const setId = set.id;
    const limitRequest: SendLimitRequest = {
      recipientKey: request.recipient.key,
      purpose: request.purpose,
      endUserIp: request.endUserIp,
      now,
    };

    let idempotencyKeyId: string | undefined;
    if (request.idempotencyKey !== "") {
      idempotencyKeyId = hasher.idempotencyKeyId(ctx.caller, request.idempotencyKey);
      const fingerprint = hasher.requestFingerprint([
        request.recipient.key,
        request.purpose,
        request.locale,
        String(request.ttlMs),
        request.code === "" ? "" : hasher.codeHmac(setId, request.code),
        request.endUserIp,
      ]);
      const claim = await store.claimIdempotencyKey(idempotencyKeyId, { fingerprint, messageId }, options.idempotencyTtlMs);
      if (!claim.claimed) {
        if (claim.existing.fingerprint !== fingerprint) {
          throw new OtpError(
            "already_exists",
            "idempotency_key was already used for a different request; use a new key for a new request",
            { reason: "IDEMPOTENCY_KEY_REUSED", metadata: { message_id: claim.existing.messageId } },
          );
        }
        const replayed = await replay(ctx, claim.existing.messageId, limitRequest);
        if (replayed !== undefined) return replayed;
        // The first call's message was never accepted (as far as is known) and
        // nothing will try it again: this call sends, under the key, unless
        // another retry took the key over first.
        logger.warn({ message_id: claim.existing.messageId }, "idempotency key held by a message that was never sent; taking it over");
        await store.releaseIdempotencyKey(idempotencyKeyId, claim.existing.messageId);
        const retaken = await store.claimIdempotencyKey(idempotencyKeyId, { fingerprint, messageId }, options.idempotencyTtlMs);
        if (!retaken.claimed) throw asReplay(requestInProgress());
      }
    }

    // The admission of a send not handed to the delivery yet: taken back if
    // the send stops before that (storing its code or record failed).
    let unsent: SendAdmission | undefined;
    // Its place in the backlog, until the transport counts it instead.
    let place: BacklogPlace | undefined;
    try {
      // First, and without a round trip: a relay that is not keeping up
      // refuses the send before any limit is spent (nothing to refund) or any
      // code is made. A replay above sent nothing, so it was not refused.
      if (options.backlog !== undefined) {
        place = options.backlog.enter();
        if (place === undefined) throw backlogFull();
      }
      // A send refused for suppression spends no rate budget: the limiter
      // checks the suppression first, in the same round trip as the limits
      // (or, for a limiter that cannot, the list is read before it).
      const recipientHash = options.suppression?.recipientHash(request.recipient.key);
      // While OTP_SECRET rotates, a recipient suppressed under the previous secret stays suppressed.
      const previousRecipientHash = options.suppression?.previousRecipientHash(request.recipient.key);
      // Made only for a suppressed recipient, not for every send.
      const refusal = () => ({ messageId, recipientHash, now, ...request });
      if (recipientHash !== undefined && limiter.checksSuppression !== true) {
        const cause = await options.suppression?.check(recipientHash, previousRecipientHash);
        if (cause !== undefined) return await refuseSuppressed(ctx, refusal(), cause);
      }
      const admission = await limiter.admit(ctx, {
        ...limitRequest,
        recipientHash: limiter.checksSuppression === true ? recipientHash : undefined,
        previousRecipientHash: limiter.checksSuppression === true ? previousRecipientHash : undefined,
      });
      if ("suppressedBy" in admission) return await refuseSuppressed(ctx, refusal(), admission.suppressedBy);
      unsent = admission;
      const code = request.code === "" ? generateCode(options.codeLength) : request.code;
      const expiresAt = now + request.ttlMs;
      // The email says how long the code is valid (whole minutes): `ttlMs` from now.
      const render = (ttlMs: number) => renderer.render({ purpose: request.purpose, locale: request.locale, code, ttlMs });
      const mailOf = (rendered: RenderedMessage) =>
        buildOtpMail({
          rendered,
          to: request.recipient.address,
          fromName: options.from.name,
          fromAddress: options.from.address,
          messageId,
          bounceDomain: options.bounceDomain,
          code,
        });
      const rendered = render(request.ttlMs);
      const mail = mailOf(rendered);
      const record: DeliveryRecord = {
        messageId,
        caller: ctx.caller,
        // Handed to the dispatcher at once: stored as SENDING straight away,
        // which spares the dispatcher a SENDING write before the first attempt.
        state: "SENDING",
        recipientMasked: maskAddress(request.recipient.address),
        recipientDomain: request.recipient.domain,
        purpose: request.purpose,
        locale: rendered.locale,
        createdAt: now,
        updatedAt: now,
        expiresAt,
        attempts: [],
        traceId: ctx.traceId,
        spanId: ctx.spanId,
        recipientHash,
        // A bounce or complaint that quotes the code (its Subject) is recognised by this, and redacted.
        codeFingerprint: { length: code.length, hmac: hasher.reportCodeHmac(messageId, code) },
        resendAvailableAt: admission.resendAvailableAt,
      };
      // Record and code are both stored before any attempt, so a status query
      // (or a bounce) can never find a message it does not know. They are
      // written concurrently, with the recipient's index: one round trip of
      // waiting instead of two or three.
      const recordWrite = store.putRecord(record, options.recordRetentionMs);
      try {
        await Promise.all([
          recordWrite,
          store.addCode(set, { id: messageId, hmac: hasher.codeHmac(setId, code), expiresAt }, setOptions(now)),
          indexForRecipient(recipientHash, messageId),
        ]);
      } catch (error) {
        if (await recordWrite.then(() => true, () => false)) {
          // The record was stored but the code was not: the mail will never go, so the record
          // must not read SENDING (support would see a send in progress). Best effort, not awaited: the caller
          // hears the storage error without waiting on a store that is failing.
          const failed: DeliveryRecord = { ...record, state: "FAILED", failureReason: "not sent: the code could not be stored", updatedAt: clock.now() };
          store.putRecord(failed, options.recordRetentionMs).catch((writeError: unknown) => {
            logger.warn({ err: writeError, message_id: messageId }, "could not mark the record of an unsent message FAILED");
          });
        }
        throw error;
      }
      logger.info(
        { message_id: messageId, recipient: record.recipientMasked, purpose: request.purpose, caller: ctx.caller },
        "otp queued",
      );

      // From here on the message may reach the relay: its admission stands, whatever happens next.
      unsent = undefined;
      // The dispatch hands it to the transport at once, which counts it from there.
      place?.leave();
      place = undefined;
      // A retry's mail, and that of an attempt that waited for a connection, states the whole
      // minutes the code has left when it starts or leaves, not the ttl (minutes later it must not
      // promise time the code no longer has); with less than a minute left none goes. Rendered
      // again only when that figure changed.
      let madeMail = mail;
      let madeMinutes = Math.floor(request.ttlMs / validityUnitMs);
      const remake = (remainingMs: number): OutgoingMail => {
        const minutes = Math.floor(remainingMs / validityUnitMs);
        if (minutes !== madeMinutes) {
          madeMail = mailOf(render(remainingMs));
          madeMinutes = minutes;
        }
        return madeMail;
      };
      const result = await delivery.dispatch(record, mail, {
        answerBy: ctx.answerBy,
        retryMail: { minRemainingMs: validityUnitMs, make: remake },
      });
      // A retry is pointless before the limits admit the same send again.
      if (result.state === "FAILED") throw sendFailure(result, admission.resendAvailableAt - clock.now());
      return { messageId, state: result.state, expiresAt, resendAvailableAt: admission.resendAvailableAt };
    } catch (error) {
      place?.leave();
      // A retryable failure must not pin its idempotency key for a day: the
      // caller's retry with the same key should really try again. A failure
      // that keeps the key (see keepsIdempotencyKey) is remembered and replayed.
      const keyId = keepsIdempotencyKey(error) ? undefined : idempotencyKeyId;
      // Both at once: one round trip of waiting on the way to the caller's error.
      const [refunded] = await Promise.all([
        unsent === undefined ? true : refund(unsent, messageId),
        keyId === undefined
          ? undefined
          : store.releaseIdempotencyKey(keyId, messageId).catch((releaseError: unknown) => {
              logger.warn({ err: releaseError, message_id: messageId }, "could not release idempotency key");
            }),
      ]);
      // The limits still count the send that did not happen: a retry is refused until they admit it again,
      // so the retry delay (1 s for storage) must not say sooner.
      if (!refunded && unsent !== undefined) throw retryNotBefore(error, unsent.resendAvailableAt - clock.now());
      throw error;
    }
  }

  async function getDeliveryStatus(ctx: CallContext, rawMessageId: string): Promise<DeliveryStatus> {
    const messageId = validateMessageId(rawMessageId);
    const [record, reports] = await readWithReports(messageId);
    // Another caller's message answers exactly like an unknown one: existence is not leaked.
    if (record === undefined || record.caller !== ctx.caller) {
      throw new OtpError("not_found", "no message with this message_id (records are kept for a limited time)", {
        reason: "MESSAGE_NOT_FOUND",
      });
    }
    // DSNs are stored beside the record by the bounce intake; join them here.
    const joined = withReports(record, reports);
    const known = joined.suppressedBy === undefined ? joined : { ...joined, suppressedBy: causeSeenBy(ctx.caller, joined.suppressedBy) };
    const now = clock.now();
    return { record: { ...known, state: effectiveState(known, now) }, explanation: explain(known, now) };
  }

  /**
   * Throws FAILED_PRECONDITION for a suppressed recipient, after recording
   * the refused message as SUPPRESSED with the bounce that caused it.
   * Nothing is sent and no code is stored.
   */
  async function refuseSuppressed(
    ctx: CallContext,
    request: {
      readonly messageId: string;
      readonly recipientHash: string | undefined;
      readonly now: number;
      readonly recipient: { readonly address: string; readonly domain: string };
      readonly purpose: DeliveryRecord["purpose"];
      readonly locale: string;
    },
    cause: SuppressionEntry,
  ): Promise<never> {
    const { messageId, now } = request;
    const record: DeliveryRecord = {
      messageId,
      caller: ctx.caller,
      state: "SUPPRESSED",
      recipientMasked: maskAddress(request.recipient.address),
      recipientDomain: request.recipient.domain,
      purpose: request.purpose,
      locale: request.locale,
      createdAt: now,
      updatedAt: now,
      expiresAt: now,
      attempts: [],
      traceId: ctx.traceId,
      spanId: ctx.spanId,
      recipientHash: request.recipientHash,
      suppressedBy: cause,
    };
    // Support asking about the address sees the refusal too, and why.
    await Promise.all([store.putRecord(record, options.recordRetentionMs), indexForRecipient(request.recipientHash, messageId)]);
    options.observer?.stateChanged(record);
    logger.info(
      { message_id: messageId, recipient: record.recipientMasked, bounced_message_id: cause.messageId, status: cause.status },
      "otp not sent: recipient suppressed",
    );
    throw suppressedError(record, causeSeenBy(ctx.caller, cause));
  }

  async function verifyOtp(ctx: CallContext, input: VerifyOtpInput): Promise<VerifyOtpResult> {
    const request = validateVerifyOtp(input);
    authorizePurpose(ctx, request.purpose);
    const now = clock.now();
    const max = options.maxFailedAttempts;
    let { outcome, cap } = await guess(ctx, request, now, hasher, verifyLimiter);
    // Codes sent before OTP_SECRET rotated live in code sets keyed by the
    // previous secret (another hash tag, so another Redis Cluster slot: not
    // in the same script). Only when the current secret has no code set, and
    // only after that answer: one guess is counted by one set, once. "none"
    // counted nothing. The old set keeps its own attempts, lock and EXPIRED.
    const previous = options.previousSecret;
    if (outcome.state === "none" && previous !== undefined && now < previous.codesUntil) {
      ({ outcome, cap } = await guess(ctx, request, now, previous.hasher, previous.verifyLimiter));
    }
    switch (outcome.state) {
      case "none":
        return { result: "NOT_FOUND", attemptsRemaining: max };
      case "expired":
        return { result: "EXPIRED", attemptsRemaining: 0 };
      case "locked":
        return { result: "LOCKED", attemptsRemaining: 0 };
      case "capped":
        if (cap === undefined) throw new Error("the store refused a guess for a failure cap it was not given");
        return cap.refuse(outcome.full);
      case "invalid": {
        const remaining = Math.max(0, max - outcome.failures);
        logger.info({ recipient: maskAddress(request.recipient.address), purpose: request.purpose, remaining }, "otp guess failed");
        return { result: "INVALID", attemptsRemaining: remaining };
      }
      case "verified":
        logger.info({ message_id: outcome.id, purpose: request.purpose }, "otp verified");
        return { result: "VERIFIED", attemptsRemaining: max };
    }
  }

  /**
   * One guess against the code set of (caller, recipient, purpose) under
   * `keys` (the current secret's hasher, or the previous one's).
   *
   * A wrong guess also counts against the caller's cap on failures for this
   * recipient, which fresh codes do not reset. The store checks the cap,
   * counts the guess, compares it with every live code and consumes the
   * matched one in one atomic step: concurrent guesses can overshoot
   * neither maxFailures nor the cap, a right guess counts against neither,
   * and a code verifies once.
   */
  async function guess(
    ctx: CallContext,
    request: { readonly recipient: { readonly key: string }; readonly purpose: string; readonly code: string },
    now: number,
    keys: Hasher,
    limits: VerifyLimiter,
  ) {
    const set = codeSet(keys, ctx.caller, request.recipient.key, request.purpose);
    const cap = limits.failureCap(ctx, { recipientKey: request.recipient.key, now });
    const outcome = await store.verifyGuess(set, keys.codeHmac(set.id, request.code), {
      ...setOptions(now),
      failureCap: cap === undefined ? undefined : { log: cap.log, entry: cap.entry },
    });
    return { outcome, cap };
  }

  /** The code set of (caller, recipient, purpose), in the group of (caller, recipient). */
  function codeSet(keys: Hasher, caller: string, recipientKey: string, purpose: string): CodeSetRef {
    return { group: keys.codeGroupId(caller, recipientKey), id: keys.codeSetId(caller, recipientKey, purpose) };
  }

  /** PERMISSION_DENIED when the caller is restricted to other purposes. */
  function authorizePurpose(ctx: CallContext, purpose: string): void {
    if (options.purposes?.allows(ctx.caller, purpose) === false) {
      throw new OtpError("permission_denied", `purpose: this caller may not send or verify codes for ${purpose}`, {
        reason: "PURPOSE_NOT_ALLOWED",
        metadata: { purpose },
      });
    }
  }

  return { sendOtp, getDeliveryStatus, verifyOtp };
}

/** `error` with a retry delay of at least `ms`, when it carries one that is shorter; otherwise `error` itself. */
function retryNotBefore(error: unknown, ms: number): unknown {
  if (!(error instanceof OtpError) || error.retryAfterMs === undefined || error.retryAfterMs >= ms) return error;
  return new OtpError(error.kind, error.message, {
    reason: error.reason,
    violations: error.violations,
    retryAfterMs: ms,
    metadata: error.metadata,
    quotaViolations: error.quotaViolations,
    cause: error.cause,
  });
}

/**
 * Whether a failed send keeps its idempotency key, so that a retry with the
 * key answers this failure again instead of sending: a permanent refusal by
 * the relay (sending again cannot help), and a send given up at shutdown
 * while the relay had the message, or that the relay had whole and never
 * answered (it may have gone out: a retry with the same key must never make
 * a second mail with another code).
 */
function keepsIdempotencyKey(error: unknown): boolean {
  return error instanceof OtpError && (error.reason === "RELAY_REJECTED" || error.reason === "SEND_OUTCOME_UNKNOWN");
}

/** A repeated idempotency_key whose first call has not written its record yet. */
function requestInProgress(): OtpError {
  return new OtpError("unavailable", "the first request with this idempotency_key is still in progress; retry shortly", {
    reason: "IDEMPOTENT_REQUEST_IN_PROGRESS",
    retryAfterMs: 1000,
  });
}

/**
 * The send backlog is full: the relay is not keeping up with this instance's
 * sends. Nothing was sent, stored or spent, and no message_id exists.
 * Another instance, or this one a little later, may take the send.
 */
function backlogFull(): OtpError {
  return new OtpError(
    "unavailable",
    "email not sent: the SMTP relay is not keeping up and this instance's send backlog is full; " +
      "nothing was sent, stored or counted against the limits; retry later",
    { reason: "RELAY_BACKLOG_FULL", retryAfterMs: 5000 },
  );
}

/**
 * A suppression as `caller` is told it: the message whose bounce or
 * complaint caused it is named (messageId) only to the caller that sent it.
 * Callers share recipients, not messages: another caller's message id is
 * not theirs to know (GetDeliveryStatus answers it NOT_FOUND to them), and
 * what they can act on, that the address bounced or complained, when, with
 * what status and until when, is all still there. An entry that does not
 * say whose message it was (written before entries did) names it to nobody.
 * The stored record keeps the whole cause, for support.
 */
function causeSeenBy(caller: string, cause: SuppressionEntry): SuppressionEntry {
  return cause.caller === caller ? cause : { ...cause, messageId: "" };
}

/** The error SendOtp answers for a suppressed recipient (`record` is the SUPPRESSED message). */
function suppressedError(record: DeliveryRecord, cause: SuppressionEntry): OtpError {
  if (suppressionReason(cause) === "complaint") {
    const feedbackType = cause.feedbackType ?? "abuse";
    return new OtpError(
      "failed_precondition",
      `email not sent: ${record.recipientMasked} marked an earlier message as spam (their mailbox provider's feedback ` +
        `report, type ${feedbackType}) at ${new Date(cause.bouncedAt).toISOString()}, so sends to it are suppressed until ` +
        `${new Date(cause.expiresAt).toISOString()}; if the user does want codes, support can lift it ` +
        `(npm run suppression -- remove) (message_id ${record.messageId})`,
      {
        reason: "RECIPIENT_SUPPRESSED",
        metadata: {
          message_id: record.messageId,
          suppression_reason: "complaint",
          ...(cause.messageId === "" ? {} : { complained_message_id: cause.messageId }),
          feedback_type: feedbackType,
          suppressed_until: new Date(cause.expiresAt).toISOString(),
        },
      },
    );
  }
  return new OtpError(
    "failed_precondition",
    `email not sent: ${record.recipientMasked} hard-bounced (status ${cause.status}) at ` +
      `${new Date(cause.bouncedAt).toISOString()}, so sends to it are suppressed until ` +
      `${new Date(cause.expiresAt).toISOString()}; check the address with the user (message_id ${record.messageId})`,
    {
      reason: "RECIPIENT_SUPPRESSED",
      metadata: {
        message_id: record.messageId,
        ...(cause.messageId === "" ? {} : { bounced_message_id: cause.messageId }),
        bounce_status: cause.status,
        suppression_reason: "hard_bounce",
        suppressed_until: new Date(cause.expiresAt).toISOString(),
      },
    },
  );
}

/**
 * The error SendOtp answers when the relay never accepted the message.
 * `limitsAdmitInMs`: when the limits will admit the same send again; a
 * retryable error never tells the caller to retry sooner than that.
 */
function sendFailure(record: DeliveryRecord, limitsAdmitInMs = 0): OtpError {
  const last = record.attempts.at(-1);
  const metadata = { message_id: record.messageId };
  const reason = record.failureReason ?? "the message could not be sent";
  if (last?.outcome === "abandoned" || last?.outcome === "unanswered") {
    // Not a failure anyone can tell: the relay may have taken it. Not UNAVAILABLE either: retrying the same request cannot help.
    const why =
      last.outcome === "abandoned"
        ? "the service stopped while the relay had the message and its answer is unknown"
        : "the relay had the whole message and gave no final reply, so whether it took it is unknown";
    return new OtpError(
      "failed_precondition",
      `email may have been sent: ${why}, so it may ` +
        `still arrive (message_id ${record.messageId}); a retry with the same idempotency_key sends nothing: ` +
        "if the user got no code, send with a new idempotency_key",
      // attempt_outcome: which of the two, for callers and for otp_sends_total's outcome.
      { reason: "SEND_OUTCOME_UNKNOWN", metadata: { ...metadata, attempt_outcome: last.outcome } },
    );
  }
  if (last?.errorCode === "EAUTH") {
    return new OtpError(
      "unavailable",
      `email not sent: the SMTP relay rejected the service's credentials; an operator must fix SMTP_URL (message_id ${record.messageId})`,
      { reason: "RELAY_AUTH_FAILED", metadata, retryAfterMs: Math.max(60_000, limitsAdmitInMs) },
    );
  }
  if (last?.errorCode === "ETLS" && last.outcome === "permanent") {
    // An untrusted certificate or a relay without STARTTLS fails every message alike: the
    // operator's to fix, not the message's, so the caller may retry (and the key is not spent).
    return new OtpError(
      "unavailable",
      `email not sent: TLS with the SMTP relay failed; an operator must fix SMTP_URL or SMTP_TLS_CA (message_id ${record.messageId})`,
      { reason: "RELAY_TLS_FAILED", metadata, retryAfterMs: Math.max(60_000, limitsAdmitInMs) },
    );
  }
  if (last?.errorCode === "ESESSION" && last.outcome === "permanent") {
    // Refused at the greeting or EHLO: every message fails alike until the relay (or an operator) changes
    // its mind, so the caller may retry, and the key is not spent.
    return new OtpError("unavailable", `email not sent: ${reason}; retry later (message_id ${record.messageId})`, {
      reason: "RELAY_UNAVAILABLE",
      metadata,
      retryAfterMs: Math.max(60_000, limitsAdmitInMs),
    });
  }
  if (last?.outcome === "permanent") {
    return new OtpError("failed_precondition", `email not sent: ${reason} (message_id ${record.messageId})`, {
      reason: "RELAY_REJECTED",
      metadata,
    });
  }
  return new OtpError("unavailable", `email not sent: ${reason}; retry later (message_id ${record.messageId})`, {
    reason: "RELAY_UNAVAILABLE",
    metadata,
    retryAfterMs: Math.max(5000, limitsAdmitInMs),
  });
}
