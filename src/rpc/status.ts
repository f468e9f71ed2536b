/**
 * The one place that turns an error into a gRPC status.
 *
 * Domain errors (`OtpError`) keep their caller-facing message and gain rich
 * details in the `grpc-status-details-bin` trailer (a google.rpc.Status with
 * Any-packed ErrorInfo, BadRequest, RetryInfo and QuotaFailure), which grpc-go, grpc-java,
 * connect-es and grpcurl all know how to decode. Anything else is a bug or an
 * unexpected failure: it is logged and answered with a bare INTERNAL so that
 * no internal text (addresses, codes, stack traces) ever reaches the caller.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, durationFromMs, type Any } from "@bufbuild/protobuf/wkt";
import { Metadata, status as GrpcCode } from "@grpc/grpc-js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { OtpError, type OtpErrorKind } from "../errors.js";
import type { Logger } from "../logger.js";

/** ErrorInfo.domain of every error this service raises. */
export const errorDomain = "otp-email";

/** The trailer that carries the serialized google.rpc.Status. */
export const statusDetailsKey = "grpc-status-details-bin";

/** What grpc-js needs to end a call with an error (a `ServerStatusResponse`). */
export interface GrpcErrorStatus {
  readonly code: GrpcCode;
  readonly details: string;
  readonly metadata: Metadata;
}

/** Where the failure happened, for the log line of an unexpected error. */
export interface ErrorSite {
  /** The gRPC method path, `/otp.v1.OtpEmailService/SendOtp`. */
  readonly method: string;
}

const codeOfKind: Readonly<Record<OtpErrorKind, GrpcCode>> = {
  invalid_argument: GrpcCode.INVALID_ARGUMENT,
  not_found: GrpcCode.NOT_FOUND,
  already_exists: GrpcCode.ALREADY_EXISTS,
  resource_exhausted: GrpcCode.RESOURCE_EXHAUSTED,
  failed_precondition: GrpcCode.FAILED_PRECONDITION,
  unavailable: GrpcCode.UNAVAILABLE,
  unauthenticated: GrpcCode.UNAUTHENTICATED,
  permission_denied: GrpcCode.PERMISSION_DENIED,
  internal: GrpcCode.INTERNAL,
};

/** The message sent for anything that is not an OtpError. */
export const internalErrorMessage = "internal error";

/**
 * Maps any thrown value to the status that ends the call.
 *
 * OtpError -> its kind's code, its message and rich details. Any other value
 * -> INTERNAL "internal error"; the value itself is logged (never sent).
 */
export function toGrpcStatus(error: unknown, logger: Logger, site: ErrorSite): GrpcErrorStatus {
  if (!(error instanceof OtpError)) {
    logger.error({ err: error, grpc_method: site.method }, "unexpected error while handling a call");
    return withDetails(GrpcCode.INTERNAL, internalErrorMessage, [
      anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason: "INTERNAL", domain: errorDomain })),
    ]);
  }
  if (error.kind === "internal") {
    // The domain chose the message, so it may be sent; the cause may not.
    logger.error({ err: error, grpc_method: site.method }, "internal error while handling a call");
  }
  return withDetails(codeOfKind[error.kind], error.message, detailsOf(error));
}

/** ErrorInfo always; BadRequest, RetryInfo and QuotaFailure when the error carries them. */
function detailsOf(error: OtpError): Any[] {
  const details: Any[] = [
    anyPack(
      ErrorInfoSchema,
      create(ErrorInfoSchema, {
        reason: error.reason,
        domain: errorDomain,
        metadata: { ...error.metadata },
      }),
    ),
  ];
  if (error.violations.length > 0) {
    details.push(
      anyPack(
        BadRequestSchema,
        create(BadRequestSchema, {
          fieldViolations: error.violations.map((v) => ({
            field: v.field,
            description: v.description,
            reason: v.reason,
          })),
        }),
      ),
    );
  }
  if (error.retryAfterMs !== undefined && Number.isFinite(error.retryAfterMs)) {
    // Duration nanos must be whole numbers; a retry hint needs no sub-millisecond precision.
    const retryDelay = durationFromMs(Math.max(0, Math.ceil(error.retryAfterMs)));
    details.push(anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay })));
  }
  if (error.quotaViolations.length > 0) {
    details.push(
      anyPack(
        QuotaFailureSchema,
        create(QuotaFailureSchema, {
          violations: error.quotaViolations.map((v) => ({
            subject: v.subject,
            description: v.description,
            apiService: errorDomain,
            quotaId: v.quotaId,
            quotaValue: BigInt(v.quotaValue),
          })),
        }),
      ),
    );
  }
  return details;
}

function withDetails(code: GrpcCode, message: string, details: Any[]): GrpcErrorStatus {
  const status = create(StatusSchema, { code, message, details });
  const metadata = new Metadata();
  metadata.set(statusDetailsKey, toBuffer(toBinary(StatusSchema, status)));
  return { code, details: message, metadata };
}

/** A Buffer view over the bytes: grpc-js wants a Buffer, and a copy would be waste. */
function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
