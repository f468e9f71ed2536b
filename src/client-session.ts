/**
 * The Node client's HTTP/2 connection: connect-node's Http2SessionManager,
 * except that a call's stream is closed once its response has ended.
 *
 * Why: a server may answer before it has read the whole request. grpc-js
 * refuses a message over its max receive size after its first bytes, and a
 * proxy may refuse a large body the same way. connect-node (2.3) then stops
 * writing the request without ever ending it: the stream stays half-open for
 * good, and the session manager keeps the socket ref'd while any stream is
 * open, so the caller's process never exits. Closing the stream with
 * NO_ERROR, which RFC 9113 section 8.1 describes as aborting the rest of a
 * request without error, ends it as soon as the response is complete; the
 * call has already got its answer and keeps it.
 */
import { constants, type ClientHttp2Stream } from "node:http2";
import { Http2SessionManager } from "@connectrpc/connect-node";

export class ClientSessionManager extends Http2SessionManager {
  override async request(...args: Parameters<Http2SessionManager["request"]>): Promise<ClientHttp2Stream> {
    const stream = await super.request(...args);
    stream.once("end", () => {
      // After the turn in which connect-node reads the end of the response
      // and settles the call, so that closing cannot change its outcome.
      setImmediate(() => {
        if (!stream.writableFinished && !stream.closed) stream.close(constants.NGHTTP2_NO_ERROR);
      });
    });
    return stream;
  }
}
