/**
 * The `grpcurl` and `buf curl` commands the development banner offers to copy:
 * one SendOtp against this service, with the transport and the credentials it
 * asks of callers. Secrets and file paths are placeholders, quoted so that a
 * shell passes them on as they are; the service never prints a real token.
 */
import { isIPv6 } from "node:net";

/**
 * The `host:port` a caller on this machine dials to reach a listener bound to
 * `host`: a wildcard address (`0.0.0.0`, `::`) is reached through loopback
 * (dialling a wildcard works on Linux only), and an IPv6 host is bracketed,
 * as grpcurl and URLs want it (`[::1]:50051`, never `::1:50051`).
 */
export function dialTarget(host: string, port: number): string {
  if (host === "0.0.0.0") return `127.0.0.1:${port}`;
  if (!isIPv6(host)) return `${host}:${port}`;
  return `[${/^[0:]+$/.test(host) ? "::1" : host}]:${port}`;
}

/**
 * The commands as lines a terminal shows as they are. In the JSON log every
 * `"` of the request reads `\"`, and a command copied from there fails.
 */
export function tryCommandsText(commands: TryCommands): string {
  return `otp-email: try it (copy a line into a shell):\n  ${commands.grpcurl}\n  ${commands.bufCurl}\n`;
}

export interface TryCommandsOptions {
  /** `host:port` of the gRPC listener, as a caller dials it (see dialTarget). */
  readonly target: string;
  /** The listener speaks TLS (TLS_CERT). */
  readonly tls: boolean;
  /** Callers may present a client certificate (TLS_CLIENT_CA). */
  readonly clientCertificates: boolean;
  /** Callers may present a bearer token (AUTH_TOKENS). */
  readonly tokens: boolean;
}

export interface TryCommands {
  readonly grpcurl: string;
  readonly bufCurl: string;
}

const data = `{"recipient":"you@example.com","purpose":"PURPOSE_LOGIN"}`;
const method = "otp.v1.OtpEmailService/SendOtp";

/**
 * With tokens on, the token header (the simpler credential when both are on);
 * else, with client certificates on, a certificate and its key.
 */
export function tryCommands(options: TryCommandsOptions): TryCommands {
  const header = options.tokens ? ["-H", "'authorization: Bearer <your token>'"] : [];
  const certificate = !options.tokens && options.clientCertificates;
  const grpcurl = [
    "grpcurl",
    ...(options.tls ? ["-cacert", "'<ca.pem>'"] : ["-plaintext"]),
    ...(certificate ? ["-cert", "'<client.pem>'", "-key", "'<client-key.pem>'"] : []),
    ...header,
    "-d",
    `'${data}'`,
    options.target,
    method,
  ];
  const bufCurl = [
    "npx buf curl --protocol grpc",
    ...(options.tls ? ["--cacert", "'<ca.pem>'"] : ["--http2-prior-knowledge"]),
    ...(certificate ? ["--cert", "'<client.pem>'", "--key", "'<client-key.pem>'"] : []),
    ...header,
    "-d",
    `'${data}'`,
    `${options.tls ? "https" : "http"}://${options.target}/${method}`,
  ];
  return { grpcurl: grpcurl.join(" "), bufCurl: bufCurl.join(" ") };
}
