/**
 * The start every operator command about one address shares (`npm run
 * suppression`, `npm run deliveries`): the address checked and keyed as
 * SendOtp does, the service's configuration, the audit logger on stderr, the
 * service's Redis, and its suppression list under OTP_SECRET (and
 * OTP_SECRET_PREVIOUS while it is consulted).
 */
import { systemClock } from "../clock.js";
import { ConfigError, loadConfigFromProcess, type Config } from "../config.js";
import { createLogger, type Logger } from "../logger.js";
import { maskAddress, parseAddress } from "../otp/address.js";
import { defaultKeepExpiredMs } from "../otp/otp-service.js";
import { previousSecretFromConfig } from "../otp/secret-rotation.js";
import { openOperatorStore, type OperatorStore } from "../store/operator-access.js";
import { createSuppressionList, type SuppressionList } from "./suppression.js";

/** The exit statuses the commands share (sysexits.h for the last two). */
export const operatorExit = { done: 0, failed: 1, usage: 2, nothing: 3, unavailable: 69, config: 78 } as const;

export interface OperatorSession extends OperatorStore {
  /** The address as logs show it. */
  readonly recipient: string;
  /** SendOtp's key of the address (lower-cased, the domain in punycode). */
  readonly key: string;
  readonly config: Config;
  readonly redis: NonNullable<Config["redis"]>;
  /** JSON lines on stderr, in the service's log format. */
  readonly audit: Logger;
  readonly suppression: SuppressionList;
}

export interface OperatorSessionOptions {
  /** The command's name in its messages (`suppression`). */
  readonly prefix: string;
  /** The audit lines' `component`. */
  readonly component: string;
  /** The address as typed; never echoed. */
  readonly address: string;
  /** Why this configuration keeps the command from the service's data, if it does (beyond a missing REDIS_URL). */
  readonly unreachable: (config: Config) => string | undefined;
}

/** Opens a session, or says on stderr why not and answers the exit status (2: the address, 78: configuration). */
export function openOperatorSession(options: OperatorSessionOptions): OperatorSession | number {
  const { prefix } = options;
  // The very check SendOtp makes of a recipient, and the key it derives.
  const parsed = parseAddress(options.address);
  if (typeof parsed === "string") {
    process.stderr.write(`${prefix}: the address is not valid: ${parsed} (SendOtp refuses it too)\n`);
    return operatorExit.usage;
  }
  let config: Config;
  try {
    config = loadConfigFromProcess();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${prefix}: configuration error: ${error.message}\n`);
      return operatorExit.config;
    }
    throw error;
  }
  const unreachable = options.unreachable(config);
  if (unreachable !== undefined || config.redis === undefined) {
    process.stderr.write(`${prefix}: configuration error: ${unreachable ?? "REDIS_URL is not set"}\n`);
    return operatorExit.config;
  }
  const audit = createLogger({
    level: "info",
    destination: { write: (line: string) => void process.stderr.write(line) },
    base: { component: options.component },
  });
  const { redis } = config;
  const opened = openOperatorStore(redis);
  const previous = previousSecretFromConfig(config, defaultKeepExpiredMs);
  const suppression = createSuppressionList({
    store: opened.store,
    secret: config.otp.secret,
    ttlMs: config.bounce.suppressionTtlMs,
    clock: systemClock,
    previous: previous && { secret: previous.secret, until: previous.suppressionUntil },
  });
  return { ...opened, recipient: maskAddress(parsed.address), key: parsed.key, config, redis, audit, suppression };
}
