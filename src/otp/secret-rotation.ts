/**
 * OTP_SECRET rotation: what the secret that OTP_SECRET replaced is still
 * good for, and until when. Everything the service stores is keyed by HMACs
 * of the secret, so the previous secret is consulted where forgetting it
 * would hurt a user (the suppression list; codes sent before the rotation),
 * and only as long as data made under it can still exist.
 */
import { createHmac } from "node:crypto";
import type { Config } from "../config.js";

/** A short public id of a secret (8 hex of its HMAC of "key-id"): safe to log, tells two secrets apart. */
export function secretKeyId(secret: Buffer): string {
  return createHmac("sha256", secret).update("key-id").digest("hex").slice(0, 8);
}

export interface SecretRotationOptions {
  /** OTP_SECRET_PREVIOUS; undefined: no rotation going on. */
  readonly previousSecret: Buffer | undefined;
  /** OTP_SECRET_ROTATED_AT, ms since the epoch. */
  readonly rotatedAt: number | undefined;
  /** SUPPRESSION_TTL. */
  readonly suppressionTtlMs: number;
  /** RECORD_RETENTION: how long a DSN for a message sent before the rotation may still be applied. */
  readonly recordRetentionMs: number;
  /** OTP_TTL_MAX: the longest a code sent before the rotation stays live. */
  readonly codeTtlMaxMs: number;
  /** How long a code set outlives its last code (to answer EXPIRED): the OTP service's keepExpiredMs. */
  readonly keepExpiredMs: number;
}

/** The previous secret and the last moment (exclusive) each use consults it. */
export interface PreviousSecret {
  readonly secret: Buffer;
  readonly keyId: string;
  readonly rotatedAt: number;
  /**
   * A suppression written under the previous secret lasts SUPPRESSION_TTL;
   * one may still be written (by a late DSN for a record made before the
   * rotation) until RECORD_RETENTION after it.
   */
  readonly suppressionUntil: number;
  /** A code set made under the previous secret is gone by then: OTP_TTL_MAX and the keep-expired margin. */
  readonly codesUntil: number;
}

/** The previous secret while any use still consults it, else undefined. */
export function previousSecretOf(options: SecretRotationOptions): PreviousSecret | undefined {
  const { previousSecret, rotatedAt } = options;
  if (previousSecret === undefined || rotatedAt === undefined) return undefined;
  return {
    secret: previousSecret,
    keyId: secretKeyId(previousSecret),
    rotatedAt,
    suppressionUntil: rotatedAt + options.suppressionTtlMs + options.recordRetentionMs,
    codesUntil: rotatedAt + options.codeTtlMaxMs + options.keepExpiredMs,
  };
}

/**
 * The rotation the configuration describes (OTP_SECRET_PREVIOUS,
 * OTP_SECRET_ROTATED_AT), with the windows the service applies: what the
 * service and the suppression command both read, so they agree on it.
 */
export function previousSecretFromConfig(
  config: Pick<Config, "otp" | "bounce" | "recordRetentionMs">,
  keepExpiredMs: number,
): PreviousSecret | undefined {
  return previousSecretOf({
    previousSecret: config.otp.previousSecret,
    rotatedAt: config.otp.rotatedAt,
    suppressionTtlMs: config.bounce.suppressionTtlMs,
    recordRetentionMs: config.recordRetentionMs,
    codeTtlMaxMs: config.otp.ttlMaxMs,
    keepExpiredMs,
  });
}
