/**
 * Request validation: every field checked, every broken rule reported at
 * once, no value ever echoed back (it may be hostile, huge or a code).
 */
import { isIP } from "node:net";
import { OtpError, type FieldViolation } from "../errors.js";
import { purposes, type Purpose } from "../delivery/record.js";
import { parseAddress, hasUnsafeCharacters, type ParsedAddress } from "./address.js";
import { codePattern, invisibleMarks, messageIdPattern, normalizeTypedCode } from "./code.js";
import type { SendOtpInput, VerifyOtpInput } from "./types.js";

export interface TtlRule {
  readonly defaultMs: number;
  readonly minMs: number;
  readonly maxMs: number;
}

export interface ValidSendOtp {
  readonly recipient: ParsedAddress;
  readonly purpose: Purpose;
  /** Lower-cased tag, or "" for the default. */
  readonly locale: string;
  /** "" to generate. */
  readonly code: string;
  readonly ttlMs: number;
  readonly idempotencyKey: string;
  readonly endUserIp: string;
}

export interface ValidVerifyOtp {
  readonly recipient: ParsedAddress;
  readonly purpose: Purpose;
  /** Normalised: no spaces or dashes, upper case. */
  readonly code: string;
}

/**
 * A well-formed BCP 47 tag (RFC 5646 section 2.1) with a 2- or 3-letter
 * language: language and extended languages (`zh-yue`), script, region,
 * variants (`de-CH-1996`), extensions (`en-US-u-ca-gregory`), private use.
 * `en-US-US` (two regions), `en-a` (an extension with nothing in it) or
 * `ko-x` are not.
 */
const localePattern = new RegExp(
  [
    "^[a-z]{2,3}(?:-[a-z]{3}){0,3}",
    "(?:-[a-z]{4})?",
    "(?:-(?:[a-z]{2}|\\d{3}))?",
    "(?:-(?:[a-z\\d]{5,8}|\\d[a-z\\d]{3}))*",
    "(?:-[a-wyz\\d](?:-[a-z\\d]{2,8})+)*",
    "(?:-x(?:-[a-z\\d]{1,8})+)?$",
  ].join(""),
  "i",
);
const purposeList = purposes.join(", ");

class Violations {
  readonly list: FieldViolation[] = [];
  add(field: string, reason: string, description: string): void {
    this.list.push({ field, reason, description });
  }
  throwIfAny(): void {
    if (this.list.length > 0) throw OtpError.invalid(this.list);
  }
}

function checkRecipient(violations: Violations, raw: string): ParsedAddress | undefined {
  const parsed = parseAddress(raw);
  if (typeof parsed === "string") {
    violations.add("recipient", "RECIPIENT_INVALID", parsed);
    return undefined;
  }
  return parsed;
}

function checkPurpose(violations: Violations, raw: string): Purpose | undefined {
  const purpose = purposes.find((known) => known === raw);
  if (purpose === undefined) {
    violations.add("purpose", "PURPOSE_INVALID", `required: one of ${purposeList} (PURPOSE_LOGIN...)`);
  }
  return purpose;
}

export function validateSendOtp(input: SendOtpInput, ttl: TtlRule): ValidSendOtp {
  const violations = new Violations();
  const recipient = checkRecipient(violations, input.recipient);
  const purpose = checkPurpose(violations, input.purpose);

  if (input.locale !== "" && (input.locale.length > 35 || !localePattern.test(input.locale))) {
    violations.add("locale", "LOCALE_INVALID", "must be a BCP 47 language tag such as en, ko or ko-KR, or empty");
  }
  if (input.code !== "" && !codePattern.test(input.code)) {
    violations.add("code", "CODE_INVALID", "must be empty (the service generates one) or 4-10 characters of 0-9 and A-Z");
  }
  const ttlMs = input.ttlMs ?? ttl.defaultMs;
  if (Number.isNaN(ttlMs)) {
    violations.add("ttl", "TTL_INVALID", "is not a valid duration: seconds and nanos must not differ in sign, and nanos must be under one second");
  } else if (!Number.isFinite(ttlMs) || ttlMs < ttl.minMs || ttlMs > ttl.maxMs) {
    violations.add(
      "ttl",
      "TTL_OUT_OF_RANGE",
      `must be from ${ttl.minMs / 1000}s to ${ttl.maxMs / 1000}s, or unset for the default (${ttl.defaultMs / 1000}s)`,
    );
  }
  if (
    input.idempotencyKey.length > 128 ||
    (input.idempotencyKey !== "" && !/^[\x21-\x7E]+$/.test(input.idempotencyKey))
  ) {
    violations.add("idempotency_key", "IDEMPOTENCY_KEY_INVALID", "must be at most 128 printable ASCII characters without spaces");
  }
  if (input.endUserIp !== "" && (input.endUserIp.length > 45 || isIP(input.endUserIp) === 0)) {
    violations.add("end_user_ip", "END_USER_IP_INVALID", "must be an IPv4 or IPv6 address, or empty");
  }
  violations.throwIfAny();
  return {
    recipient: recipient as ParsedAddress,
    purpose: purpose as Purpose,
    locale: input.locale.toLowerCase(),
    code: input.code,
    ttlMs: Math.round(ttlMs),
    idempotencyKey: input.idempotencyKey,
    endUserIp: input.endUserIp,
  };
}

export function validateVerifyOtp(input: VerifyOtpInput): ValidVerifyOtp {
  const violations = new Violations();
  const recipient = checkRecipient(violations, input.recipient);
  const purpose = checkPurpose(violations, input.purpose);
  const code = normalizeTypedCode(input.code.length > 64 ? "" : input.code);
  if (input.code === "") {
    violations.add("code", "CODE_INVALID", "required: the code the user typed");
  } else if (hasUnsafeCharacters(input.code.replace(invisibleMarks, "")) || !codePattern.test(code)) {
    violations.add("code", "CODE_INVALID", "must be 4-10 letters or digits (spaces and dashes are ignored)");
  }
  violations.throwIfAny();
  return { recipient: recipient as ParsedAddress, purpose: purpose as Purpose, code };
}

export function validateMessageId(messageId: string): string {
  if (messageId === "") {
    throw OtpError.invalid([{ field: "message_id", reason: "MESSAGE_ID_INVALID", description: "required: the message_id returned by SendOtp" }]);
  }
  if (!messageIdPattern.test(messageId)) {
    throw OtpError.invalid([
      { field: "message_id", reason: "MESSAGE_ID_INVALID", description: "is not a message_id returned by SendOtp (26 lower-case letters and digits)" },
    ]);
  }
  return messageId;
}
