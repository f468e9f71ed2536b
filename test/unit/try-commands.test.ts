import { describe, expect, it } from "vitest";
import { tryCommands } from "../../src/try-commands.js";

const target = "127.0.0.1:50051";

describe("the development banner's grpcurl and buf curl commands", () => {
  it("plaintext without callers: -plaintext, HTTP/2 prior knowledge over http://, no credentials", () => {
    const { grpcurl, bufCurl } = tryCommands({ target, tls: false, clientCertificates: false, tokens: false });
    expect(grpcurl).toMatch(/^grpcurl -plaintext -d '\{.*\}' 127\.0\.0\.1:50051 otp\.v1\.OtpEmailService\/SendOtp$/);
    expect(bufCurl).toMatch(/^npx buf curl --protocol grpc --http2-prior-knowledge -d '\{.*\}' http:\/\/127\.0\.0\.1:50051\/otp\.v1\.OtpEmailService\/SendOtp$/);
  });

  it("with AUTH_TOKENS: the authorization header with a placeholder for the token", () => {
    const { grpcurl, bufCurl } = tryCommands({ target, tls: false, clientCertificates: false, tokens: true });
    for (const command of [grpcurl, bufCurl]) expect(command).toContain(" -H 'authorization: Bearer <your token>' -d ");
  });

  it("with TLS: the CA to trust instead of plaintext, and https://", () => {
    const { grpcurl, bufCurl } = tryCommands({ target, tls: true, clientCertificates: false, tokens: true });
    expect(grpcurl).toMatch(/^grpcurl -cacert '<ca\.pem>' -H 'authorization: Bearer <your token>' -d /);
    expect(bufCurl).toMatch(/^npx buf curl --protocol grpc --cacert '<ca\.pem>' -H 'authorization: Bearer <your token>' -d .* https:\/\/127\.0\.0\.1:50051\//);
    expect(grpcurl + bufCurl).not.toMatch(/plaintext|prior-knowledge|http:\/\//);
  });

  it("with client certificates and no tokens: a certificate and its key; with tokens as well, the token alone", () => {
    const mtls = tryCommands({ target, tls: true, clientCertificates: true, tokens: false });
    expect(mtls.grpcurl).toContain(" -cacert '<ca.pem>' -cert '<client.pem>' -key '<client-key.pem>' -d ");
    expect(mtls.bufCurl).toContain(" --cacert '<ca.pem>' --cert '<client.pem>' --key '<client-key.pem>' -d ");
    expect(mtls.grpcurl + mtls.bufCurl).not.toContain("authorization");

    const both = tryCommands({ target, tls: true, clientCertificates: true, tokens: true });
    expect(both.grpcurl + both.bufCurl).not.toContain("client.pem");
    expect(both.grpcurl).toContain("'authorization: Bearer <your token>'");
  });
});
