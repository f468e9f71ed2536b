import { describe, expect, it } from "vitest";
import { dialTarget, tryCommands, tryCommandsText } from "../../src/try-commands.js";

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

describe("the target the banner's commands dial", () => {
  it("an IPv4 or named host as it is", () => {
    expect(dialTarget("127.0.0.1", 50051)).toBe("127.0.0.1:50051");
    expect(dialTarget("localhost", 50051)).toBe("localhost:50051");
  });

  it("an IPv6 host in brackets, as grpcurl and URLs want it", () => {
    expect(dialTarget("::1", 50051)).toBe("[::1]:50051");
    const { grpcurl, bufCurl } = tryCommands({ target: dialTarget("::1", 50051), tls: false, clientCertificates: false, tokens: false });
    expect(grpcurl).toMatch(/ \[::1\]:50051 otp\.v1\.OtpEmailService\/SendOtp$/);
    expect(bufCurl).toMatch(/ http:\/\/\[::1\]:50051\/otp\.v1\.OtpEmailService\/SendOtp$/);
  });

  it("a wildcard listener through loopback, which every system can dial", () => {
    expect(dialTarget("0.0.0.0", 50051)).toBe("127.0.0.1:50051");
    expect(dialTarget("::", 50051)).toBe("[::1]:50051");
  });
});

describe("the banner's commands as plain lines", () => {
  it("holds each command as it is, with no JSON escaping a shell would not undo", () => {
    const commands = tryCommands({ target, tls: false, clientCertificates: false, tokens: false });
    const lines = tryCommandsText(commands).split("\n").map((line) => line.trim());
    expect(lines).toContain(commands.grpcurl);
    expect(lines).toContain(commands.bufCurl);
    expect(tryCommandsText(commands)).not.toContain("\\");
  });
});
