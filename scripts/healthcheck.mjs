#!/usr/bin/env node
// The container's health check: one grpc.health.v1.Health/Check call to the
// service, exit 0 only when it answers SERVING (anything else, an error or
// no answer within the timeout: exit 1, which Docker counts as unhealthy).
//
//   node scripts/healthcheck.mjs [host:port] [--service NAME] [--timeout MS]
//
// The address defaults to GRPC_ADDR (0.0.0.0 and [::] mean this host); the
// service name to "" (the whole server; `otp.v1.OtpEmailService` works too).
// When TLS_CERT is set the server speaks TLS, so the check does too, without
// verifying the certificate: it talks to its own container over loopback.
//
// No grpc_health_probe binary, no .proto and no generated code: a generic
// grpc-js client and the two tiny messages encoded by hand.
//   HealthCheckRequest  { string service = 1; }
//   HealthCheckResponse { ServingStatus status = 1; }  SERVING = 1
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";

const statusNames = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];
const SERVING = 1;

function usage(message) {
  console.error(`healthcheck: ${message}\nusage: node scripts/healthcheck.mjs [host:port] [--service NAME] [--timeout MS]`);
  process.exit(1);
}

function parseArgs(argv) {
  const options = { address: undefined, service: "", timeoutMs: 3000 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--service") options.service = argv[++i] ?? usage("--service needs a name");
    else if (arg === "--timeout") options.timeoutMs = Number(argv[++i]);
    else if (arg.startsWith("-")) usage(`unknown option ${arg}`);
    else options.address = arg;
  }
  if (!Number.isInteger(options.timeoutMs) || options.timeoutMs < 1) usage("--timeout must be a whole number of milliseconds");
  return options;
}

/** `0.0.0.0:50051` -> `127.0.0.1:50051`, `[::]:50051` -> `[::1]:50051`: where a wildcard listener is reachable. */
function targetOf(address) {
  const match = /^(\[[^\]]+\]|[^:]*):(\d{1,5})$/.exec(address);
  if (match === null) usage(`address must be host:port, not ${address}`);
  const host = match[1];
  const reachable = host === "" || host === "0.0.0.0" ? "127.0.0.1" : host === "[::]" ? "[::1]" : host;
  return `${reachable}:${match[2]}`;
}

function varint(value) {
  const bytes = [];
  let rest = value;
  while (rest > 0x7f) {
    bytes.push((rest & 0x7f) | 0x80);
    rest >>>= 7;
  }
  bytes.push(rest);
  return bytes;
}

/** HealthCheckRequest: field 1 (service), wire type 2; an empty string is an empty message. */
function encodeRequest(service) {
  const name = Buffer.from(service, "utf8");
  return name.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a, ...varint(name.length)]), name]);
}

/** HealthCheckResponse's status (field 1, varint); 0 (UNKNOWN) when absent. Unknown fields are skipped. */
function decodeStatus(bytes) {
  let offset = 0;
  let status = 0;
  const readVarint = () => {
    let value = 0;
    let shift = 0;
    for (;;) {
      if (offset >= bytes.length) throw new Error("truncated HealthCheckResponse");
      const byte = bytes[offset++];
      value += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return value;
      shift += 7;
    }
  };
  while (offset < bytes.length) {
    const key = readVarint();
    const field = Math.floor(key / 8);
    const wireType = key % 8;
    if (wireType === 0) {
      const value = readVarint();
      if (field === 1) status = value;
    } else if (wireType === 2) offset += readVarint();
    else if (wireType === 1) offset += 8;
    else if (wireType === 5) offset += 4;
    else throw new Error(`unexpected wire type ${wireType} in HealthCheckResponse`);
  }
  return status;
}

const options = parseArgs(process.argv.slice(2));
const target = targetOf(options.address ?? process.env.GRPC_ADDR ?? "127.0.0.1:50051");
const tls = (process.env.TLS_CERT ?? "").trim() !== "";
const credentials = tls
  ? grpc.credentials.createSsl(null, null, null, { rejectUnauthorized: false })
  : grpc.credentials.createInsecure();
const client = new grpc.Client(target, credentials);

client.makeUnaryRequest(
  "/grpc.health.v1.Health/Check",
  (request) => request,
  (response) => response,
  encodeRequest(options.service),
  new grpc.Metadata(),
  { deadline: Date.now() + options.timeoutMs },
  (error, response) => {
    client.close();
    if (error) {
      console.log(`${target}: ${grpc.status[error.code] ?? error.code}: ${error.details}`);
      process.exit(1);
    }
    let status;
    try {
      status = decodeStatus(response);
    } catch (decodeError) {
      console.log(`${target}: ${decodeError.message}`);
      process.exit(1);
    }
    console.log(`${target} ${JSON.stringify(options.service)}: ${statusNames[status] ?? status}`);
    process.exit(status === SERVING ? 0 : 1);
  },
);
