/**
 * gRPC client helpers for tests: a grpc-js client built from the same
 * ServiceDefinition the server uses, typed unary calls, rich error details,
 * and `buf curl` (our stand-in for grpcurl).
 */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import {
  create,
  fromBinary,
  type DescMessage,
  type DescMethodUnary,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { BadRequestSchema, ErrorInfoSchema, QuotaFailureSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { Health } from "../../gen/health/v1/health_pb.js";
import { OtpEmailService } from "../../gen/otp/v1/otp_email_pb.js";
import { serviceDefinition } from "../../src/rpc/service-adapter.js";

export const GrpcOtpClient = grpc.makeGenericClientConstructor(serviceDefinition(OtpEmailService), "OtpEmailService");
export const GrpcHealthClient = grpc.makeGenericClientConstructor(serviceDefinition(Health), "Health");

type UnaryFn = (
  request: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response?: unknown) => void,
) => grpc.ClientUnaryCall;

/** Calls a unary method on a grpc-js client made from our ServiceDefinition. */
export function grpcUnary<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  method: DescMethodUnary<I, O>,
  request: MessageInitShape<I>,
  options: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
): Promise<MessageShape<O>> {
  const fn = (client as unknown as Record<string, UnaryFn>)[method.name];
  if (fn === undefined) throw new Error(`client has no ${method.name}`);
  const callOptions: grpc.CallOptions = { deadline: Date.now() + (options.deadlineMs ?? 15_000) };
  return new Promise((resolve, reject) => {
    fn.call(client, create(method.input, request), options.metadata ?? new grpc.Metadata(), callOptions, (error, response) => {
      if (error) reject(error);
      else resolve(response as MessageShape<O>);
    });
  });
}

/** The ServiceError a call failed with; fails the test when it succeeded. */
export async function grpcError(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (error) {
    if (typeof error === "object" && error !== null && "code" in error) return error as grpc.ServiceError;
    throw error;
  }
  throw new Error("expected the call to fail");
}

/** The google.rpc details in a grpc-js error's trailers, unpacked. */
export function errorDetails(error: grpc.ServiceError) {
  const [bytes] = error.metadata.get("grpc-status-details-bin");
  if (!(bytes instanceof Buffer)) throw new Error("no grpc-status-details-bin trailer");
  const status = fromBinary(StatusSchema, bytes);
  const unpack = <T extends DescMessage>(schema: T) =>
    status.details.map((any) => anyUnpack(any, schema)).find((value) => value !== undefined);
  return {
    status,
    badRequest: unpack(BadRequestSchema),
    errorInfo: unpack(ErrorInfoSchema),
    retryInfo: unpack(RetryInfoSchema),
    quotaFailure: unpack(QuotaFailureSchema),
  };
}

const run = promisify(execFile);
const bufBin = fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url));

/** Runs `buf curl --protocol grpc --http2-prior-knowledge ...args` and returns stdout. */
export async function bufCurl(args: string[]): Promise<string> {
  const { stdout } = await run(bufBin, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], {
    timeout: 20_000,
  });
  return stdout;
}
