/**
 * The `grpcurl` and `buf curl` commands the development banner offers to copy:
 * one SendOtp against this service, with the transport and the credentials it
 * asks of callers. Secrets and file paths are placeholders, quoted so that a
 * shell passes them on as they are; the service never prints a real token.
 */

export interface TryCommandsOptions {
  /** `host:port` of the gRPC listener. */
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
