/**
 * The send backlog: the messages an instance has taken on that no pooled SMTP
 * connection carries yet. A relay that stalls (accepts the connection, then
 * holds each reply up to SMTP_SOCKET_TIMEOUT) keeps every connection busy, and
 * without a bound the messages behind them pile up in memory while their
 * callers each wait the whole SEND_WAIT_BUDGET to hear "pending" and their
 * codes expire before a first attempt. With a limit, a new message that would
 * wait beyond it is turned away before anything is rendered, stored or
 * spent, so SendOtp can answer at once and truthfully.
 *
 * Waiting are: the transport's sends that the pool had its turn at and no
 * pooled connection took, counted as the pool takes them
 * (SmtpTransport.waitingForConnection), so that a send waits here however
 * many connections the pool has: behind busy ones, and while the pool pauses
 * before it opens one again (after one failed, or was recycled after
 * SMTP_MAX_MESSAGES_PER_CONNECTION); and, beyond the connections free for
 * them, the messages on their way to a connection: those that took a place
 * and were not handed to the transport yet (SendOtp between its checks and
 * the dispatch), and those handed to the transport that the pool has not had
 * its turn at yet (SmtpTransport.handingOver: being DKIM-signed, or queued
 * until the pool's next turn of the event loop). A connection that carries
 * nothing and that no waiting send is first in line for takes one of those
 * at once: counted as waiting, a send just handed over while connections sit
 * idle would fill a small backlog and turn the next send away for nothing.
 * Retries of messages already taken on go to the transport without a place:
 * they are counted, never turned away.
 */
import type { Logger } from "../logger.js";
import type { SmtpTransport } from "./smtp-transport-types.js";

export interface SendBacklogOptions {
  /** Most messages that may wait for a connection (SMTP_MAX_BACKLOG); undefined: no bound. */
  readonly limit: number | undefined;
  /** The transport's pooled connections (SMTP_POOL_SIZE). */
  readonly connections: number;
  /** The transport's sends as it counts them: those on their way to the pool, those waiting for a connection, and those on one. */
  readonly transport: Pick<SmtpTransport, "handingOver" | "waitingForConnection" | "onConnection">;
  readonly logger: Logger;
}

/** A new message's place in the backlog, held until it is handed to the transport or stops. */
export interface BacklogPlace {
  /** Gives the place up; a second call does nothing. */
  leave(): void;
}

export interface SendBacklog {
  /** The limit in force; undefined: none. */
  readonly limit: number | undefined;
  /**
   * A place for one new message, or undefined when `limit` messages already
   * wait: the relay is not keeping up, and this message should not be taken on.
   */
  enter(): BacklogPlace | undefined;
  /** Messages waiting for a connection now. */
  size(): number;
}

export function createSendBacklog(options: SendBacklogOptions): SendBacklog {
  const { limit, connections, transport } = options;
  if (!Number.isInteger(connections) || connections < 1) {
    throw new Error(`send backlog: connections must be a positive integer, got ${connections}`);
  }
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) {
    throw new Error(`send backlog: limit must be a positive integer or undefined, got ${limit}`);
  }
  const logger = options.logger.child({ component: "send-backlog" });
  /** Places taken and not given up. */
  let placed = 0;
  /** Refusals since the backlog last had room; 0 while it has room. */
  let refused = 0;

  const size = (): number => {
    const waiting = transport.waitingForConnection();
    // Free for the messages on their way: connections carrying nothing, less those the waiting sends are first in line for.
    const free = connections - transport.onConnection() - waiting;
    return waiting + Math.max(0, placed + transport.handingOver() - Math.max(0, free));
  };

  const leaveOnce = (): BacklogPlace => {
    let left = false;
    return {
      leave() {
        if (left) return;
        left = true;
        placed--;
      },
    };
  };

  return {
    limit,
    size,
    enter() {
      if (limit !== undefined) {
        const waiting = size();
        if (waiting >= limit) {
          // Said once when it fills, not per refusal: a stalled relay under load refuses thousands.
          if (refused === 0) {
            logger.warn(
              { backlog: waiting, limit, connections },
              "the SMTP relay is not keeping up: the send backlog (SMTP_MAX_BACKLOG) is full; new sends are refused " +
                "with UNAVAILABLE (RELAY_BACKLOG_FULL) until messages waiting for a connection go out",
            );
          }
          refused++;
          return undefined;
        }
        if (refused > 0) {
          logger.info({ backlog: waiting, limit, refused }, "the send backlog has room again: new sends are taken on");
          refused = 0;
        }
      }
      placed++;
      return leaveOnce();
    },
  };
}
