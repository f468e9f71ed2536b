/**
 * The Node client's HTTP/2 connection: connect-node's Http2SessionManager,
 * with two changes.
 *
 * A call's stream is closed once its response has ended. Why: a server may
 * answer before it has read the whole request. grpc-js refuses a message
 * over its max receive size after its first bytes, and a proxy may refuse a
 * large body the same way. connect-node (2.3) then stops writing the request
 * without ever ending it: the stream stays half-open for good, and the
 * session manager keeps the socket ref'd while any stream is open, so the
 * caller's process never exits. Closing the stream with NO_ERROR, which RFC
 * 9113 section 8.1 describes as aborting the rest of a request without
 * error, ends it as soon as the response is complete; the call has already
 * got its answer and keeps it.
 *
 * On a new connection, one call goes out at once and the others wait for the
 * server's SETTINGS. connect-node opens streams as soon as the socket
 * connects, when Node still assumes the server takes 100 at once: a burst of
 * calls on a fresh client, to a service whose GRPC_MAX_CONCURRENT_STREAMS is
 * lower, had the streams over the bound refused (REFUSED_STREAM, which the
 * caller sees as INTERNAL). Once the bound is known, Node holds the streams
 * over it until others end, as grpc-js clients do.
 */
import { constants, type ClientHttp2Stream, type Http2Session } from "node:http2";
import { Http2SessionManager } from "@connectrpc/connect-node";

export class ClientSessionManager extends Http2SessionManager {
  /** The connection whose SETTINGS have been applied, while it takes new streams. */
  private settled: Http2Session | undefined;
  /**
   * While a new connection's first stream is out and its SETTINGS awaited:
   * other calls wait for it. Resolves whether the connection got that far.
   */
  private settling: Promise<boolean> | undefined;

  override async request(...args: Parameters<Http2SessionManager["request"]>): Promise<ClientHttp2Stream> {
    let gated = true;
    while (this.settling !== undefined) {
      // A connection that failed before its SETTINGS: the waiting calls go as connect-node sends them, sharing its
      // next attempt, rather than each making one of its own in turn (20 s apiece for a host that never answers).
      if (!(await this.settling)) {
        gated = false;
        break;
      }
    }
    const stream = gated && !this.isSettled() ? await this.firstRequest(args) : await super.request(...args);
    stream.once("end", () => {
      // After the turn in which connect-node reads the end of the response
      // and settles the call, so that closing cannot change its outcome.
      setImmediate(() => {
        if (!stream.writableFinished && !stream.closed) stream.close(constants.NGHTTP2_NO_ERROR);
      });
    });
    return stream;
  }

  private isSettled(): boolean {
    const session = this.settled;
    return session !== undefined && !session.closed && !session.destroyed;
  }

  /** Opens a stream (and with it a connection, when there is none) and holds other calls until its SETTINGS are applied. */
  private async firstRequest(args: Parameters<Http2SessionManager["request"]>): Promise<ClientHttp2Stream> {
    let release: (opened: boolean) => void = () => undefined;
    this.settling = new Promise((resolve) => (release = resolve));
    const done = (opened: boolean): void => {
      this.settling = undefined;
      release(opened);
    };
    let stream: ClientHttp2Stream;
    try {
      stream = await super.request(...args);
    } catch (error) {
      done(false);
      throw error;
    }
    const session = stream.session;
    if (session === undefined) {
      done(false);
      return stream;
    }
    void settingsApplied(session).then(() => {
      const opened = !session.closed && !session.destroyed;
      if (opened) {
        this.settled = session;
        // After a GOAWAY connect-node opens another connection, whose SETTINGS are awaited again.
        session.once("goaway", () => {
          if (this.settled === session) this.settled = undefined;
        });
      }
      done(opened);
    });
    return stream;
  }
}

/** How long calls wait for a server that never acknowledges our SETTINGS (which it must) before going out as connect-node sends them. */
const settingsWaitMs = 5000;

/**
 * Resolves once the server's SETTINGS apply to `session` (or it ends). The
 * server's SETTINGS are the first frame it sends, so the acknowledgement of
 * ours, which comes after them, says they have been applied.
 */
function settingsApplied(session: Http2Session): Promise<void> {
  if (!session.pendingSettingsAck || session.closed || session.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const applied = (): void => {
      clearTimeout(timer);
      session.off("localSettings", applied);
      session.off("close", applied);
      resolve();
    };
    // Unref'd: a safety net must not be what keeps the caller's process alive.
    const timer = setTimeout(applied, settingsWaitMs).unref();
    session.on("localSettings", applied);
    session.on("close", applied);
  });
}
