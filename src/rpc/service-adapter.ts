/**
 * Serves protobuf-es services with grpc-js.
 *
 * grpc-js only needs, per method, a path and four (de)serializers; protobuf-es
 * gives us the descriptors. `serviceDefinition` builds the former from the
 * latter (so no .proto is loaded at runtime, and a grpc-js client can be made
 * from the same definition), and `bindService` wraps typed async handlers in
 * grpc-js's callback and stream API, sending every failure through
 * `toGrpcStatus`.
 *
 * A request that does not decode is the caller's mistake, so it must end as
 * INVALID_ARGUMENT. grpc-js answers INTERNAL when `requestDeserialize` throws,
 * so the deserializer here never throws: it returns a `MalformedRequest`, and
 * the bound handler turns that into INVALID_ARGUMENT. Strings are decoded
 * strictly: protobuf-es (>= 2.17) honours the proto3 `utf8_validation =
 * VERIFY` feature and throws on invalid UTF-8 instead of substituting U+FFFD
 * (the integration tests hold it to that).
 */
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import {
  status as GrpcStatus,
  type MethodDefinition,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type UntypedServiceImplementation,
  type handleServerStreamingCall,
  type handleUnaryCall,
  type sendUnaryData,
} from "@grpc/grpc-js";
import { OtpError } from "../errors.js";
import type { Logger } from "../logger.js";
import { toGrpcStatus } from "./status.js";

/**
 * What every grpc-js server call offers, whatever its kind: metadata, peer,
 * deadline, `cancelled` (grpc-js does not export a name for it).
 */
export type ServerCall = Omit<ServerUnaryCall<unknown, unknown>, "request">;

/** What every handler gets besides its request. */
export interface HandlerContext {
  /** The grpc-js call: metadata, peer, deadline. */
  readonly call: ServerCall;
  /** Aborted when the client cancels, the deadline passes or the server force-closes the call. */
  readonly signal: AbortSignal;
}

/** What a server-streaming handler gets: the context and a way to send. */
export interface StreamingHandlerContext<O extends DescMessage> extends HandlerContext {
  /** Sends one response message. Ignored once the call is cancelled. */
  readonly send: (message: MessageInitShape<O>) => void;
}

/** Answers one request with one response; a rejection becomes the call's status. */
export type UnaryImpl<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  context: HandlerContext,
) => Promise<MessageInitShape<O>>;

/**
 * Sends any number of responses; the stream ends with OK when the promise
 * resolves, or with the mapped status when it rejects.
 */
export type ServerStreamingImpl<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  context: StreamingHandlerContext<O>,
) => Promise<void>;

type ImplOf<M> = M extends { methodKind: "unary"; input: infer I; output: infer O }
  ? I extends DescMessage
    ? O extends DescMessage
      ? UnaryImpl<I, O>
      : never
    : never
  : M extends { methodKind: "server_streaming"; input: infer I; output: infer O }
    ? I extends DescMessage
      ? O extends DescMessage
        ? ServerStreamingImpl<I, O>
        : never
      : never
    : never;

/**
 * Handlers for every method of a generated service, keyed by the method's
 * local name (`sendOtp`). Client- and bidi-streaming methods are not
 * supported (their handler type is `never`).
 */
export type ServiceImpl<S extends DescService> = {
  readonly [K in keyof S["method"]]: ImplOf<S["method"][K]>;
};

/**
 * What the server's deserializer yields for bytes that do not decode. It
 * never reaches a handler: the bound handler answers INVALID_ARGUMENT.
 */
export class MalformedRequest {
  constructor(
    /** The request message's full name, `otp.v1.SendOtpRequest`. */
    readonly typeName: string,
    /** Why decoding failed, in words safe to send to the caller. */
    readonly problem: string,
  ) {}
}

/** A request as the server's deserializer yields it. */
export type Incoming<I extends DescMessage> = MessageShape<I> | MalformedRequest;

/** A service ready for `server.addService(definition, implementation)`. */
export interface BoundService {
  readonly definition: ServiceDefinition;
  readonly implementation: UntypedServiceImplementation;
}

export interface BindServiceOptions {
  /** Where unexpected handler errors are logged. */
  readonly logger: Logger;
  /**
   * Told of each call whose request did not decode, with the method's local
   * name (`sendOtp`) and the INVALID_ARGUMENT it is answered with: no
   * handler runs for it, so whoever counts what handlers answer hears of it
   * here. Default: nobody.
   */
  readonly onMalformed?: ((method: string, error: OtpError) => void) | undefined;
}

/**
 * The grpc-js ServiceDefinition of a protobuf-es service. Methods are keyed
 * by their proto name (`SendOtp`) with the local name (`sendOtp`) as
 * `originalName`, as `@grpc/proto-loader` does, so clients made with
 * `makeGenericClientConstructor` answer to both.
 */
export function serviceDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.name] = methodDefinition(method) as MethodDefinition<unknown, unknown>;
  }
  return definition;
}

/** grpc-js's view of one method: path, streaming flags and codecs. */
function methodDefinition(
  method: DescMethod,
): MethodDefinition<Incoming<DescMessage>, MessageShape<DescMessage>> {
  const { input, output } = method;
  return {
    path: methodPath(method),
    requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
    responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
    originalName: method.localName,
    requestSerialize(value) {
      if (value instanceof MalformedRequest) {
        throw new TypeError(`cannot serialize a malformed ${value.typeName}`);
      }
      return toBuffer(toBinary(input, value));
    },
    requestDeserialize: (bytes) => decodeRequest(input, bytes),
    responseSerialize: (value) => toBuffer(toBinary(output, value)),
    // Client side only: a throw here is reported by grpc-js as INTERNAL, which
    // is right for a server that sent bytes its own contract cannot read.
    responseDeserialize: (bytes) => fromBinary(output, bytes),
  };
}

/** `/otp.v1.OtpEmailService/SendOtp`. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/**
 * Binds typed handlers to a service: builds its definition and wraps every
 * handler in grpc-js's calling convention.
 */
export function bindService<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
  options: BindServiceOptions,
): BoundService {
  const handlers = impl as unknown as Readonly<Record<string, unknown>>;
  const implementation: UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const handler = handlers[method.localName];
    if (typeof handler !== "function") {
      throw new TypeError(`no handler for ${methodPath(method)}`);
    }
    switch (method.methodKind) {
      case "unary":
        implementation[method.name] = wrapUnary(
          method,
          handler as UnaryImpl<DescMessage, DescMessage>,
          options,
        );
        break;
      case "server_streaming":
        implementation[method.name] = wrapServerStreaming(
          method,
          handler as ServerStreamingImpl<DescMessage, DescMessage>,
          options,
        );
        break;
      case "client_streaming":
      case "bidi_streaming":
        throw new TypeError(`${methodPath(method)}: ${method.methodKind} methods are not supported`);
    }
  }
  return { definition: serviceDefinition(service), implementation };
}

function wrapUnary(
  method: DescMethod,
  impl: UnaryImpl<DescMessage, DescMessage>,
  { logger, onMalformed }: BindServiceOptions,
): handleUnaryCall<Incoming<DescMessage>, MessageShape<DescMessage>> {
  const site = { method: methodPath(method) };
  const decoded = decodedOrThrow(method, onMalformed);
  const output = method.output;
  // No async wrapper around the handler: its promise is settled straight
  // into the callback. Each async layer cost a promise and a microtask turn
  // per call (the handler's own promise was awaited, then re-resolved into
  // the wrapper's).
  return (
    call: ServerUnaryCall<Incoming<DescMessage>, unknown>,
    callback: sendUnaryData<MessageShape<DescMessage>>,
  ) => {
    if (isOver(call)) {
      // Nobody waits for this answer: doing the work would send a code (or use
      // up a guess) for a caller already told DEADLINE_EXCEEDED.
      callback({ code: GrpcStatus.DEADLINE_EXCEEDED, details: "Deadline exceeded" });
      return;
    }
    const context = new CallContext(call);
    const fail = (error: unknown): void => {
      context.release();
      callback(toGrpcStatus(error, logger, site));
    };
    let pending: Promise<MessageInitShape<DescMessage>>;
    try {
      pending = impl(decoded(call.request), context);
    } catch (error) {
      // A handler that throws before its first await (or a malformed request).
      fail(error);
      return;
    }
    pending.then((response) => {
      let message: MessageShape<DescMessage>;
      try {
        message = create(output, response);
      } catch (error) {
        fail(error);
        return;
      }
      context.release();
      // The callback runs outside the try: if it threw, we must not call it twice.
      callback(null, message);
    }, fail);
  };
}

function wrapServerStreaming(
  method: DescMethod,
  impl: ServerStreamingImpl<DescMessage, DescMessage>,
  { logger, onMalformed }: BindServiceOptions,
): handleServerStreamingCall<Incoming<DescMessage>, MessageShape<DescMessage>> {
  const site = { method: methodPath(method) };
  const decoded = decodedOrThrow(method, onMalformed);
  return (call: ServerWritableStream<Incoming<DescMessage>, MessageShape<DescMessage>>) => {
    const context = new CallContext(call);
    const send = (message: MessageInitShape<DescMessage>): void => {
      if (!call.cancelled) call.write(create(method.output, message));
    };
    const stream = async (): Promise<void> => {
      await impl(decoded(call.request), {
        call,
        get signal() {
          return context.signal;
        },
        send,
      });
    };
    stream().then(
      () => {
        context.release();
        if (!call.cancelled) call.end();
      },
      (error: unknown) => {
        context.release();
        const status = toGrpcStatus(error, logger, site);
        // grpc-js ends a writable server stream with the status emitted as 'error'.
        if (!call.cancelled) call.emit("error", status);
      },
    );
  };
}

/**
 * Whether a call's deadline passed before its handler could start. grpc-js
 * starts a unary handler in the same turn as it reads the request, before
 * its own deadline timer can fire: a `grpc-timeout` of a few nanoseconds, or
 * one past 2^31 ms (about 25 days, which grpc-js overflows into a deadline
 * already past), reaches the handler with DEADLINE_EXCEEDED already on its
 * way to the caller. (A call cancelled earlier never reaches it.)
 */
function isOver(call: ServerCall): boolean {
  const deadline = call.getDeadline();
  return (deadline instanceof Date ? deadline.getTime() : deadline) <= Date.now();
}

/** Decodes request bytes; never throws (see the module comment). */
function decodeRequest(schema: DescMessage, bytes: Buffer): Incoming<DescMessage> {
  try {
    return fromBinary(schema, bytes);
  } catch (error) {
    return new MalformedRequest(schema.typeName, describeDecodeError(error));
  }
}

/**
 * Names the kind of problem without echoing the bytes: protobuf-es's own
 * messages are safe, but a fixed vocabulary keeps the contract stable.
 */
function describeDecodeError(error: unknown): string {
  if (error instanceof TypeError && (error as NodeJS.ErrnoException).code === "ERR_ENCODING_INVALID_ENCODED_DATA") {
    return "a string field is not valid UTF-8";
  }
  return "the bytes are not a valid protobuf encoding of this message";
}

/** The request as decoded; for one that did not decode, tells `onMalformed` and throws INVALID_ARGUMENT. */
function decodedOrThrow(
  method: DescMethod,
  onMalformed: BindServiceOptions["onMalformed"],
): <I extends DescMessage>(request: Incoming<I>) => MessageShape<I> {
  return (request) => {
    if (request instanceof MalformedRequest) {
      const error = new OtpError(
        "invalid_argument",
        `request could not be decoded as ${request.typeName}: ${request.problem}`,
        { reason: "MALFORMED_REQUEST" },
      );
      onMalformed?.(method.localName, error);
      throw error;
    }
    return request;
  };
}

/**
 * A handler's context, one object per call. Its AbortSignal is aborted by
 * grpc-js's 'cancelled' event while the handler runs, and made only when the
 * handler first reads it: the OTP handlers never do (each Redis command has
 * its own timeout), and an AbortController with its listener was ~1 KB and a
 * few microseconds of every VerifyOtp and GetDeliveryStatus. grpc-js also
 * emits 'cancelled' after every call it has answered, so `release` (called
 * once the handler settled) stops listening: otherwise every finished call
 * pays for an abort and its DOMException. A class rather than closures: the
 * state of a call is one small object.
 */
class CallContext implements HandlerContext {
  private controller: AbortController | undefined = undefined;
  private onCancelled: (() => void) | undefined = undefined;
  private released = false;

  constructor(readonly call: ServerCall) {}

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      const made = new AbortController();
      this.controller = made;
      if (this.call.cancelled) {
        made.abort();
      } else if (!this.released) {
        this.onCancelled = () => made.abort();
        this.call.once("cancelled", this.onCancelled);
      }
    }
    return this.controller.signal;
  }

  release(): void {
    this.released = true;
    if (this.onCancelled !== undefined) this.call.off("cancelled", this.onCancelled);
  }
}

/** A Buffer view over the bytes: grpc-js wants a Buffer, and a copy would be waste. */
function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
