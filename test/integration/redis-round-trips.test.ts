/**
 * What each RPC costs in Redis, on a private redis-server that sees nothing
 * else: the commands clients send (MONITOR; a Lua script's own calls are not
 * round trips and are left out) and the round trips they wait for (Redis's
 * read events, INFO total_reads_processed: commands sent together share
 * one). Every limit is on, suppression included, as in production.
 *
 *   SendOtp            limits+suppression script | record + code + the recipient's list | ACCEPTED record
 *   SendOtp replayed   idempotency claim | the record and the limits (read-only) together
 *   GetDeliveryStatus  one script reading the record and its reports
 *   VerifyOtp          one script (cap, count, compare, consume)
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeliveryState, Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import { startRedisServer, type RedisServer } from "../support/redis.js";
import { startTestService, type TestService } from "../support/service.js";

/**
 * The storage health probe PINGs every 5 s, part of no call: one that fell in
 * a counting window read as "ping: 0.1" per call. Here it waits an hour.
 */
const noProbePings = { intervalMs: 3_600_000 };

let server: RedisServer;
let admin: Redis;
let service: TestService;

beforeAll(async () => {
  server = await startRedisServer();
  admin = new Redis(server.url, { lazyConnect: true });
  await admin.connect();
  service = await startTestService({
    env: { REDIS_URL: server.url, LIMIT_RESEND_COOLDOWN: "30s", LIMIT_END_USER_IP: "30/10m" },
    storageProbe: noProbePings,
  });
  // A script's first use on a fresh Redis costs an EVALSHA, NOSCRIPT and an EVAL: load them first.
  const warmUp = await service.connectClient.sendOtp({ recipient: "warm-up@example.com", purpose: Purpose.LOGIN, code: "123456" });
  await service.connectClient.getDeliveryStatus({ messageId: warmUp.messageId });
  await service.connectClient.verifyOtp({ recipient: "warm-up@example.com", purpose: Purpose.LOGIN, code: "654321" });
});

afterAll(async () => {
  await service.stop();
  admin.disconnect();
  await server.stop();
});

async function readsProcessed(): Promise<number> {
  const stats = await admin.info("stats");
  const match = /total_reads_processed:(\d+)/.exec(stats);
  if (match?.[1] === undefined) throw new Error("INFO stats has no total_reads_processed");
  return Number(match[1]);
}

/**
 * Runs `calls` calls one after another; answers the commands per call (by
 * name) and the round trips per call.
 */
async function measure(calls: number, call: (i: number) => Promise<unknown>): Promise<{ commands: Record<string, number>; roundTrips: number }> {
  const monitor = await admin.monitor();
  const ownPorts = new Set([admin.stream.localPort, monitor.stream.localPort].map(String));
  const counts: Record<string, number> = {};
  monitor.on("monitor", (_time: string, args: string[], source: string) => {
    if (source === "lua" || ownPorts.has(source.split(":").at(-1) ?? "")) return;
    const name = (args[0] ?? "").toLowerCase();
    counts[name] = (counts[name] ?? 0) + 1;
  });
  const before = await readsProcessed();
  for (let i = 0; i < calls; i++) await call(i);
  // The second INFO is a read event of its own.
  const reads = (await readsProcessed()) - before - 1;
  // MONITOR lines trail the replies a little: wait for the INFO's own line, which comes after them all.
  await new Promise((resolve) => setTimeout(resolve, 200));
  monitor.disconnect();
  const commands = Object.fromEntries(Object.entries(counts).map(([name, count]) => [name, count / calls]));
  return { commands, roundTrips: reads / calls };
}

describe("Redis round trips and commands per RPC", () => {
  const calls = 10;
  const messageIds: string[] = [];

  it("SendOtp: 3 round trips, 5 commands (limits and suppression in one script; record, code and the recipient's list together; the ACCEPTED write)", async () => {
    const { commands, roundTrips } = await measure(calls, async (i) => {
      const sent = await service.connectClient.sendOtp({
        recipient: `round-trip-${i}@example.com`,
        purpose: Purpose.LOGIN,
        code: "123456",
        endUserIp: "192.0.2.7",
      });
      expect(sent.state).toBe(DeliveryState.ACCEPTED);
      messageIds.push(sent.messageId);
    });
    expect(commands).toEqual({ evalsha: 3, set: 2 });
    expect(roundTrips).toBe(3);
  });

  it("SendOtp while OTP_SECRET rotates: still 3 round trips, 5 commands (both suppression keys in the limits script)", async () => {
    const rotating = await startTestService({
      env: {
        REDIS_URL: server.url,
        LIMIT_RESEND_COOLDOWN: "30s",
        LIMIT_END_USER_IP: "30/10m",
        OTP_SECRET: "rotated-test-secret-0123456789-abcdefghijk",
        OTP_SECRET_PREVIOUS: "test-secret-0123456789-abcdefghijklmnop",
        OTP_SECRET_ROTATED_AT: new Date(Date.now() - 60_000).toISOString(),
      },
      storageProbe: noProbePings,
    });
    try {
      // A client's first use of a script is an EVAL: warm this one up too.
      await rotating.connectClient.sendOtp({ recipient: "warm-up-rotating@example.com", purpose: Purpose.LOGIN, code: "123456" });
      const { commands, roundTrips } = await measure(calls, async (i) => {
        const sent = await rotating.connectClient.sendOtp({
          recipient: `rotating-${i}@example.com`,
          purpose: Purpose.LOGIN,
          code: "123456",
          endUserIp: "192.0.2.8",
        });
        expect(sent.state).toBe(DeliveryState.ACCEPTED);
      });
      expect(commands).toEqual({ evalsha: 3, set: 2 });
      expect(roundTrips).toBe(3);
    } finally {
      await rotating.stop();
    }
  });

  it("SendOtp replayed: 2 round trips, 3 commands (the claim; then the record and the limits, read together)", async () => {
    const request = (i: number) => ({
      recipient: `replay-${i}@example.com`,
      purpose: Purpose.LOGIN,
      code: "123456",
      endUserIp: "192.0.2.8",
      idempotencyKey: `replay-${i}`,
    });
    const first: string[] = [];
    // Sent once each (and the read-only limits script loaded), then measured as replays.
    for (let i = 0; i <= calls; i++) first.push((await service.connectClient.sendOtp(request(i))).messageId);
    await service.connectClient.sendOtp(request(calls));
    const { commands, roundTrips } = await measure(calls, async (i) => {
      const replayed = await service.connectClient.sendOtp(request(i));
      expect(replayed.messageId).toBe(first[i]);
    });
    expect(commands).toEqual({ evalsha: 3 });
    expect(roundTrips).toBe(2);
  });

  it("GetDeliveryStatus: 1 round trip, 1 command reading the record and its reports together", async () => {
    const { commands, roundTrips } = await measure(calls, async (i) => {
      const status = await service.connectClient.getDeliveryStatus({ messageId: messageIds[i] ?? "" });
      expect(status.state).toBe(DeliveryState.ACCEPTED);
    });
    expect(commands).toEqual({ evalsha: 1 });
    expect(roundTrips).toBe(1);
  });

  it("VerifyOtp: 1 command, right guess or wrong", async () => {
    const wrong = await measure(calls, async (i) => {
      const result = await service.connectClient.verifyOtp({ recipient: `round-trip-${i}@example.com`, purpose: Purpose.LOGIN, code: "654321" });
      expect(result.result).toBe(VerifyResult.INVALID);
    });
    expect(wrong).toEqual({ commands: { evalsha: 1 }, roundTrips: 1 });

    const right = await measure(calls, async (i) => {
      const result = await service.connectClient.verifyOtp({ recipient: `round-trip-${i}@example.com`, purpose: Purpose.LOGIN, code: "123456" });
      expect(result.result).toBe(VerifyResult.VERIFIED);
    });
    expect(right).toEqual({ commands: { evalsha: 1 }, roundTrips: 1 });
  });
});
