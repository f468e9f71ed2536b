/**
 * AUTH_TOKENS given as a file, changed while the service runs: the real app
 * on real Redis and a real SMTP sink, called over a real gRPC socket by one
 * grpc-js client whose channel stays open throughout. The file is replaced
 * the way a mounted Kubernetes Secret is (a new file renamed over the old),
 * then the poll (TLS_RELOAD_INTERVAL) or a reload request (what SIGHUP does)
 * picks it up.
 *
 * - a token added works after the poll; a token removed is refused on the
 *   next call of the same channel; a caller that stays keeps its records;
 * - a file that fails the start-up checks is refused once it still does a
 *   settle time later: the list in use stays, the log names AUTH_TOKENS and
 *   the line and holds no hash, the metrics say so; putting it right applies
 *   it on a reload request once it reads the same a settle time later;
 * - a file that drops a caller CALLER_PURPOSES names is a revocation, never
 *   refused: applied, that caller's token refused, with a warning that a
 *   restart would stop on CALLER_PURPOSES, and /metrics counting such
 *   callers until the file lists them again;
 * - a file written in place, caught half-written by a read, is never
 *   applied nor refused as it read: a valid prefix would refuse the callers
 *   of the lines still to come.
 */
import { mkdtemp, open, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { createLogger } from "../../src/logger.js";
import { startMetricsServer, type MetricsServer } from "../../src/telemetry/metrics-server.js";
import { errorDetails, grpcError, grpcUnary } from "../support/grpc.js";
import { bearer, newToken } from "../support/otp-instances.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";
import { sampleValue } from "../support/metric-samples.js";

const { sendOtp, getDeliveryStatus } = OtpEmailService.method;

/** A token file in a folder of its own, replaced by renaming a new file over it. */
async function tokenFile(text: string): Promise<{ path: string; replace(text: string): Promise<void>; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "otp-token-reload-"));
  const path = join(dir, "tokens");
  await writeFile(path, text);
  return {
    path,
    async replace(next) {
      await writeFile(join(dir, ".tokens.tmp"), next);
      await rename(join(dir, ".tokens.tmp"), path);
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** One sample's value from the app's registry (undefined when the series does not exist). */
const sample = (service: ObservedService, name: string, labels: Record<string, string> = {}) => sampleValue(service.metrics.registry, name, labels);

const reloads = (service: ObservedService, result: string) => sample(service, "otp_auth_tokens_reloads_total", { result });
const lastReloadSuccessful = (service: ObservedService) => sample(service, "otp_auth_tokens_last_reload_successful", { variable: "AUTH_TOKENS" });

/** Retries `check` until it returns true (every 100 ms, for up to `timeoutMs`). */
async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

let recipients = 0;
const send = (service: ObservedService, token: string) =>
  grpcUnary(service.grpcClient, sendOtp, { recipient: `token-reload-${++recipients}@example.com`, purpose: Purpose.LOGIN }, { metadata: bearer(token) });

/** The reason in the ErrorInfo of a call refused UNAUTHENTICATED. */
async function refusedReason(call: Promise<unknown>): Promise<string | undefined> {
  const error = await grpcError(call);
  expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
  return errorDetails(error).errorInfo?.reason;
}

/** Every token and hash of `tokens`, which no log line may hold. */
const secretsOf = (...tokens: { token: string; entry: string }[]): string[] =>
  tokens.flatMap(({ token, entry }) => [token, entry.slice(entry.lastIndexOf(":") + 1)]);

describe("AUTH_TOKENS file re-read every TLS_RELOAD_INTERVAL", () => {
  const alpha = newToken("alpha");
  const beta = newToken("beta");
  let file: Awaited<ReturnType<typeof tokenFile>>;
  let service: ObservedService;

  beforeAll(async () => {
    file = await tokenFile(`# callers of OtpEmail\n${alpha.entry}\n`);
    service = await startObservedService({ env: { AUTH_TOKENS: file.path, TLS_RELOAD_INTERVAL: "1s" } });
  });

  afterAll(async () => {
    await service.stop();
    await file.remove();
  });

  it("a token added to the file works after the poll, without a restart; counted and logged by caller name", async () => {
    expect((await send(service, alpha.token)).state).toBe(DeliveryState.ACCEPTED);
    expect(await refusedReason(send(service, beta.token))).toBe("TOKEN_INVALID");
    expect(await reloads(service, "applied")).toBe(0);
    expect(await lastReloadSuccessful(service)).toBe(1);

    await file.replace(`# callers of OtpEmail\n${alpha.entry}\n\n${beta.entry} # added for the beta team\n`);
    await until("the new token accepted", async () => {
      try {
        return (await send(service, beta.token)).state === DeliveryState.ACCEPTED;
      } catch {
        return false;
      }
    });
    expect((await send(service, alpha.token)).state).toBe(DeliveryState.ACCEPTED);
    expect(await reloads(service, "applied")).toBe(1);
    expect(await reloads(service, "refused")).toBe(0);
    const applied = service.logs().filter((line) => line["component"] === "auth_tokens" && line["added_callers"] !== undefined);
    expect(applied).toEqual([
      expect.objectContaining({ level: "info", callers: ["alpha", "beta"], added_callers: ["beta"], removed_callers: [], tokens: 2 }),
    ]);
    const logged = service.logLines.join("\n");
    for (const secret of secretsOf(alpha, beta)) expect(logged).not.toContain(secret);
  });

  it("a token removed is refused from the next call on, on the same open channel; the caller that stays keeps its records", async () => {
    const kept = await send(service, beta.token);
    const state = service.grpcClient.getChannel().getConnectivityState(false);
    expect(state).toBe(grpc.connectivityState.READY);

    await file.replace(`${beta.entry}\n`);
    await until("the removal applied", async () => (await reloads(service, "applied")) === 2);
    expect(await refusedReason(send(service, alpha.token))).toBe("TOKEN_INVALID");
    // Same channel, never reconnected: the token is judged per call, not per connection.
    expect(service.grpcClient.getChannel().getConnectivityState(false)).toBe(grpc.connectivityState.READY);

    const status = await grpcUnary(service.grpcClient, getDeliveryStatus, { messageId: kept.messageId }, { metadata: bearer(beta.token) });
    expect(status.messageId).toBe(kept.messageId);
    expect(service.logs().filter((line) => line["component"] === "auth_tokens" && line["removed_callers"] !== undefined).at(-1)).toMatchObject({
      callers: ["beta"],
      removed_callers: ["alpha"],
    });
  });
});

describe("refused token files: the list in use stays (reload requests only, as SIGHUP)", () => {
  const alpha = newToken("alpha");
  const beta = newToken("beta");
  const gamma = newToken("gamma");
  let file: Awaited<ReturnType<typeof tokenFile>>;
  let service: ObservedService;

  beforeAll(async () => {
    file = await tokenFile(`${alpha.entry}, ${beta.entry}\n`);
    service = await startObservedService({
      env: { AUTH_TOKENS: file.path, TLS_RELOAD_INTERVAL: "off", CALLER_PURPOSES: "beta:login" },
      authTokensSettleMs: 200,
    });
  });

  afterAll(async () => {
    await service.stop();
    await file.remove();
  });

  const refusals = () => service.logs().filter((line) => line["component"] === "auth_tokens" && line["level"] === "error");

  it("a malformed line: refused once it stays so, naming AUTH_TOKENS and the line, counted once, the old tokens still work, no hash in the log", async () => {
    await file.replace(`# rotation\n${alpha.entry}\n${gamma.entry.slice(0, -3)}\n`);
    await service.app.reloadAuthTokens();
    await until("the refusal", async () => (await reloads(service, "refused")) === 1);
    expect(await lastReloadSuccessful(service)).toBe(0);
    expect(refusals()).toEqual([
      expect.objectContaining({ file: file.path, reason: expect.stringMatching(new RegExp(`^AUTH_TOKENS: ${file.path} line 3 must be CALLER:SHA256`)) as string }),
    ]);
    expect((await send(service, alpha.token)).state).toBe(DeliveryState.ACCEPTED);
    expect((await send(service, beta.token)).state).toBe(DeliveryState.ACCEPTED);
    expect(await refusedReason(send(service, gamma.token))).toBe("TOKEN_INVALID");

    // Asked again with the same file: answered, not counted again.
    await service.app.reloadAuthTokens();
    await sleep(400);
    expect(await reloads(service, "refused")).toBe(1);
    expect(refusals()).toHaveLength(1);
    expect(service.logs().filter((line) => line["component"] === "auth_tokens").at(-1)).toMatchObject({
      level: "warn",
      msg: expect.stringContaining("still not applied") as string,
    });
    const logged = service.logLines.join("\n");
    for (const secret of secretsOf(alpha, beta, gamma)) expect(logged).not.toContain(secret);
  });

  it.each([
    ["the hash of an empty token", () => `${alpha.entry}\nbeta:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n`, /line 2 \(beta\) is the SHA-256 of an empty token/],
    ["the same hash twice", () => `${beta.entry}\n${alpha.entry}\n${alpha.entry.replace("alpha:", "alpha2:")}\n`, /the same token hash is listed twice \(.* line 2 and .* line 3\)/],
  ])("%s: refused, the old list stays", async (_name, text, reason) => {
    const before = (await reloads(service, "refused")) ?? 0;
    await file.replace(text());
    await service.app.reloadAuthTokens();
    await until("the refusal", async () => (await reloads(service, "refused")) === before + 1);
    expect(refusals().at(-1)).toMatchObject({ reason: expect.stringMatching(reason) as string });
    expect((await send(service, beta.token)).state).toBe(DeliveryState.ACCEPTED);
    expect(await lastReloadSuccessful(service)).toBe(0);
  });

  it("put right: a reload request applies it once it reads the same after the settle time, the metrics recover", async () => {
    await file.replace(`${beta.entry}\n${gamma.entry}\n`);
    await service.app.reloadAuthTokens();
    await until("applied", async () => (await reloads(service, "applied")) === 1);
    expect(await lastReloadSuccessful(service)).toBe(1);
    expect((await send(service, gamma.token)).state).toBe(DeliveryState.ACCEPTED);
    expect(await refusedReason(send(service, alpha.token))).toBe("TOKEN_INVALID");

    // Asked again, nothing changed: answered in the log by caller name.
    await service.app.reloadAuthTokens();
    expect(service.logs().filter((line) => line["component"] === "auth_tokens").at(-1)).toMatchObject({
      level: "info",
      callers: ["beta", "gamma"],
      msg: expect.stringContaining("unchanged") as string,
    });
    expect(await reloads(service, "applied")).toBe(1);
  });
});

describe("a token file dropping a caller CALLER_PURPOSES names: a revocation, applied with a warning", () => {
  const alpha = newToken("alpha");
  const beta = newToken("beta");
  let file: Awaited<ReturnType<typeof tokenFile>>;
  let service: ObservedService;
  let metricsServer: MetricsServer;

  beforeAll(async () => {
    file = await tokenFile(`${alpha.entry}\n${beta.entry}\n`);
    service = await startObservedService({
      env: { AUTH_TOKENS: file.path, TLS_RELOAD_INTERVAL: "off", CALLER_PURPOSES: "beta:login" },
      authTokensSettleMs: 200,
    });
    // The app's registry as Prometheus reads it: what OtpCallerPurposesNamesUnlistedCaller fires on.
    metricsServer = await startMetricsServer({ address: "127.0.0.1:0", metrics: service.metrics, logger: createLogger({ level: "silent" }) });
  });

  afterAll(async () => {
    await metricsServer.close();
    await service.stop();
    await file.remove();
  });

  /** otp_auth_tokens_unlisted_purpose_callers as scraped from /metrics (undefined without the series). */
  async function scrapedUnlisted(): Promise<number | undefined> {
    const body = await (await fetch(metricsServer.url)).text();
    const match = /^otp_auth_tokens_unlisted_purpose_callers\{variable="AUTH_TOKENS"\} (\S+)$/m.exec(body);
    return match === null ? undefined : Number(match[1]);
  }

  const tokenLines = () => service.logs().filter((line) => line["component"] === "auth_tokens");

  it("applied: the caller's token is refused on the next call, the other caller still works, the warning names the caller and no hash", async () => {
    expect((await send(service, beta.token)).state).toBe(DeliveryState.ACCEPTED);
    expect(await scrapedUnlisted()).toBe(0);

    await file.replace(`${alpha.entry} # beta cut off: its token leaked\n`);
    await service.app.reloadAuthTokens();
    await until("applied", async () => (await reloads(service, "applied")) === 1);
    expect(await reloads(service, "refused")).toBe(0);
    // It was applied: nothing for OtpAuthTokensReloadRefused to fire on; the restart it would stop is counted instead.
    expect(await lastReloadSuccessful(service)).toBe(1);
    expect(await scrapedUnlisted()).toBe(1);
    expect(await refusedReason(send(service, beta.token))).toBe("TOKEN_INVALID");
    expect((await send(service, alpha.token)).state).toBe(DeliveryState.ACCEPTED);

    expect(tokenLines().filter((line) => line["removed_callers"] !== undefined)).toEqual([
      expect.objectContaining({
        level: "warn",
        callers: ["alpha"],
        removed_callers: ["beta"],
        unlisted_purpose_callers: ["beta"],
        msg: expect.stringMatching(
          new RegExp(
            `^AUTH_TOKENS file ${file.path} reloaded: 1 token of 1 caller \\(alpha\\); the next call is judged by it\\. ` +
              "CALLER_PURPOSES names beta, which the file no longer lists: its calls are refused \\(TOKEN_INVALID\\)\\. " +
              "A restart with this file stops at start-up \\(exit 78\\) while CALLER_PURPOSES names it: remove it there before the next restart$",
          ),
        ) as string,
      }),
    ]);
    expect(tokenLines().filter((line) => line["level"] === "error")).toEqual([]);
    const logged = service.logLines.join("\n");
    for (const secret of secretsOf(alpha, beta)) expect(logged).not.toContain(secret);
  });

  it("a reload request with the file unchanged repeats the warning; the caller listed again, the warning is gone and /metrics counts 0", async () => {
    await service.app.reloadAuthTokens();
    expect(tokenLines().at(-1)).toMatchObject({
      level: "warn",
      callers: ["alpha"],
      unlisted_purpose_callers: ["beta"],
      msg: expect.stringMatching(/ unchanged: 1 token of 1 caller \(alpha\)\. CALLER_PURPOSES names beta, .* stops at start-up \(exit 78\)/) as string,
    });
    expect(await scrapedUnlisted()).toBe(1);

    const beta2 = newToken("beta");
    await file.replace(`${alpha.entry}\n${beta2.entry}\n`);
    await service.app.reloadAuthTokens();
    await until("applied", async () => (await reloads(service, "applied")) === 2);
    expect((await send(service, beta2.token)).state).toBe(DeliveryState.ACCEPTED);
    expect(await refusedReason(send(service, beta.token))).toBe("TOKEN_INVALID");
    const reloaded = tokenLines().filter((line) => line["added_callers"] !== undefined).at(-1);
    expect(reloaded).toMatchObject({ level: "info", callers: ["alpha", "beta"], added_callers: ["beta"] });
    expect(reloaded).not.toHaveProperty("unlisted_purpose_callers");
    expect(String(reloaded?.["msg"])).not.toContain("CALLER_PURPOSES");
    expect(await scrapedUnlisted()).toBe(0);
  });
});

describe("a token file written in place (an editor, `cat > file`): read again after the settle time before it counts", () => {
  const alpha = newToken("alpha");
  const beta = newToken("beta");
  const gamma = newToken("gamma");
  let file: Awaited<ReturnType<typeof tokenFile>>;
  let service: ObservedService;

  beforeAll(async () => {
    file = await tokenFile(`${alpha.entry}\n${beta.entry}\n`);
    // The default settle time (2 s); only reload requests and the settle's own re-reads read the file.
    service = await startObservedService({ env: { AUTH_TOKENS: file.path, TLS_RELOAD_INTERVAL: "off" } });
  });

  afterAll(async () => {
    await service.stop();
    await file.remove();
  });

  const tokenLines = () => service.logs().filter((line) => line["component"] === "auth_tokens");

  /** Rewrites the file in place in two writes, `between` running after the first; the file is truncated first. */
  async function writeInTwoSteps(first: string, second: string, between: () => Promise<void>): Promise<void> {
    const writer = await open(file.path, "w");
    try {
      await writer.write(first);
      await between();
      await writer.write(second);
    } finally {
      await writer.close();
    }
  }

  /** Waits for `applied` reloads, checking on each try that `caller`'s token is never refused meanwhile. */
  async function untilApplied(applied: number, caller: { token: string }): Promise<void> {
    await until(`${applied} applied`, async () => {
      expect((await send(service, caller.token)).state).toBe(DeliveryState.ACCEPTED);
      return (await reloads(service, "applied")) === applied;
    });
  }

  it("a valid prefix caught by a reload request is never applied: the callers of the lines still to come are never refused, then the whole list applies", async () => {
    await writeInTwoSteps(`${alpha.entry}\n`, `${beta.entry}\n${gamma.entry}\n`, async () => {
      // What SIGHUP does, while the writer is between its two writes: the file reads as a list of alpha alone.
      await service.app.reloadAuthTokens();
      expect((await send(service, beta.token)).state).toBe(DeliveryState.ACCEPTED);
      expect(tokenLines().at(-1)).toMatchObject({ level: "info", settle_ms: 2000, msg: expect.stringMatching(/changed: reading it again within 2 s before applying it$/) as string });
    });
    await untilApplied(1, beta);
    expect((await send(service, gamma.token)).state).toBe(DeliveryState.ACCEPTED);
    expect((await send(service, alpha.token)).state).toBe(DeliveryState.ACCEPTED);
    // Applied once, the whole list: the prefix was never applied, nor counted.
    expect(tokenLines().filter((line) => line["added_callers"] !== undefined)).toEqual([
      expect.objectContaining({ level: "info", callers: ["alpha", "beta", "gamma"], added_callers: ["gamma"], removed_callers: [] }),
    ]);
    expect(await reloads(service, "refused")).toBe(0);
    expect(await lastReloadSuccessful(service)).toBe(1);
  });

  it("a line caught half-written is no refusal: nothing is logged as an error or counted, and the finished file applies", async () => {
    const cut = 20;
    await writeInTwoSteps(`${gamma.entry}\n${alpha.entry.slice(0, cut)}`, `${alpha.entry.slice(cut)}\n`, async () => {
      await service.app.reloadAuthTokens();
      expect(await reloads(service, "refused")).toBe(0);
      expect(await lastReloadSuccessful(service)).toBe(1);
      expect(tokenLines().at(-1)).toMatchObject({
        level: "info",
        reason: expect.stringMatching(/line 2 must be CALLER:SHA256/) as string,
        msg: expect.stringMatching(/changed but does not pass the checks \(yet\?\): reading it again within 2 s before refusing it$/) as string,
      });
    });
    await untilApplied(2, alpha);
    expect(await refusedReason(send(service, beta.token))).toBe("TOKEN_INVALID");
    expect(tokenLines().filter((line) => line["removed_callers"] !== undefined).at(-1)).toMatchObject({ callers: ["gamma", "alpha"], removed_callers: ["beta"] });
    expect(await reloads(service, "refused")).toBe(0);
    expect(await lastReloadSuccessful(service)).toBe(1);
    expect(tokenLines().filter((line) => line["level"] === "error")).toEqual([]);
    const logged = service.logLines.join("\n");
    for (const secret of secretsOf(alpha, beta, gamma)) expect(logged).not.toContain(secret);
  });
});

describe("an empty token file", () => {
  const alpha = newToken("alpha");
  let file: Awaited<ReturnType<typeof tokenFile>>;
  let service: ObservedService;

  beforeAll(async () => {
    file = await tokenFile(`${alpha.entry}\n`);
    service = await startObservedService({ env: { AUTH_TOKENS: file.path, TLS_RELOAD_INTERVAL: "off" }, authTokensSettleMs: 200 });
  });

  afterAll(async () => {
    await service.stop();
    await file.remove();
  });

  it("not in production, no CALLER_PURPOSES to keep: applied, every token refused, and no call turns anonymous", async () => {
    expect((await send(service, alpha.token)).state).toBe(DeliveryState.ACCEPTED);
    await file.replace("# every caller revoked\n");
    await service.app.reloadAuthTokens();
    await until("applied", async () => (await reloads(service, "applied")) === 1);
    expect(await lastReloadSuccessful(service)).toBe(1);
    expect(await refusedReason(send(service, alpha.token))).toBe("TOKEN_INVALID");
    expect(await refusedReason(grpcUnary(service.grpcClient, sendOtp, { recipient: "anon@example.com", purpose: Purpose.LOGIN }))).toBe(
      "CREDENTIALS_MISSING",
    );
  });
});

describe("AUTH_TOKENS listing its entries itself", () => {
  const alpha = newToken("alpha");
  let service: ObservedService;

  beforeAll(async () => {
    service = await startObservedService({ env: { AUTH_TOKENS: alpha.entry, TLS_RELOAD_INTERVAL: "1s" } });
  });

  afterAll(async () => {
    await service.stop();
  });

  it("no reload series (nothing for OtpAuthTokensReloadRefused nor OtpCallerPurposesNamesUnlistedCaller to fire on); a reload request says a restart is needed", async () => {
    const tokenMetrics = (await service.metrics.registry.getMetricsAsJSON()).filter((metric) => metric.name.startsWith("otp_auth_tokens_"));
    expect(tokenMetrics.map((metric) => metric.name)).toContain("otp_auth_tokens_unlisted_purpose_callers");
    for (const metric of tokenMetrics) expect(metric.values, metric.name).toEqual([]);
    await service.app.reloadAuthTokens();
    expect(service.logs().filter((line) => line["component"] === "auth_tokens")).toEqual([
      expect.objectContaining({ level: "info", msg: expect.stringMatching(/^AUTH_TOKENS lists its entries itself, never re-read: changing them takes a restart/) as string }),
    ]);
    expect((await send(service, alpha.token)).state).toBe(DeliveryState.ACCEPTED);
  });
});
