/**
 * The exactness tests again on a real three-master Redis Cluster: 3 whole
 * instances (REDIS_CLUSTER=true), 1,000 concurrent SendOtp, exactly the limit
 * admitted and mailed, for the recipient limit, a caller's quota and the
 * global budget. Then the key layout: every limit key in the one slot of the
 * `{limits}` hash tag, a code set and its verify-failure log in one slot,
 * every key on every node with a TTL; an idempotent replay reads the limits
 * there too.
 */
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Purpose, VerifyResult } from "../../gen/otp/v1/otp_email_pb.js";
import {
  bearer,
  call,
  detailsOf,
  newToken,
  sendOtp,
  startInstance,
  tally,
  untilServing,
  verifyOtp,
  type Instance,
} from "../support/otp-instances.js";
import type { DeliveryRecord, DeliveryReport } from "../../src/delivery/record.js";
import { createLogger } from "../../src/logger.js";
import { createRedisStore } from "../../src/store/redis-store.js";
import { randomPrefix, scanPrefix } from "../support/redis.js";
import { startRedisCluster, type RedisCluster } from "../support/redis-cluster.js";
import { startSmtpSink, type SmtpSink } from "../support/smtp-sink.js";

const alpha = newToken("alpha");
const beta = newToken("beta");
const prefixes: string[] = [];
let cluster: RedisCluster;
let sink: SmtpSink;
let instances: Instance[] = [];

beforeAll(async () => {
  [cluster, sink] = await Promise.all([startRedisCluster(), startSmtpSink()]);
});

afterEach(async () => {
  await Promise.all(instances.map((instance) => instance.stop()));
  instances = [];
});

afterAll(async () => {
  await sink.close();
  await cluster.stop();
});

async function fleet(env: Record<string, string>): Promise<Instance[]> {
  const prefix = randomPrefix();
  prefixes.push(prefix);
  instances = await Promise.all(
    Array.from({ length: 3 }, () =>
      startInstance({
        env: {
          REDIS_URL: cluster.seeds,
          REDIS_CLUSTER: "true",
          REDIS_PREFIX: prefix,
          SMTP_URL: sink.url,
          AUTH_TOKENS: `${alpha.entry},${beta.entry}`,
          ...env,
        },
      }),
    ),
  );
  await Promise.all(instances.map((instance) => untilServing(instance)));
  return instances;
}

function burst(request: (i: number) => { recipient: string; token: string }) {
  return tally(
    Array.from({ length: 1000 }, (_, i) => {
      const { recipient, token } = request(i);
      return call(instances[i % 3].client, sendOtp, { recipient, purpose: Purpose.LOGIN }, bearer(token));
    }),
  );
}

describe("exact limits on a Redis Cluster, 3 instances, 1,000 concurrent SendOtp", () => {
  it.each<{ limit: string; env: Record<string, string>; request: (i: number) => { recipient: string; token: string }; reason: string }>([
    {
      limit: "recipient",
      env: { LIMIT_RECIPIENT: "5/15m", LIMIT_RESEND_COOLDOWN: "0" },
      request: () => ({ recipient: "victim@example.com", token: alpha.token }),
      reason: "RECIPIENT_RATE_LIMITED",
    },
    {
      limit: "caller",
      env: { LIMIT_CALLER: "5/1m" },
      request: (i: number) => ({ recipient: `c${i}@example.com`, token: alpha.token }),
      reason: "CALLER_QUOTA_EXCEEDED",
    },
    {
      limit: "global",
      env: { LIMIT_GLOBAL: "5/1m", LIMIT_CALLER: "off" },
      request: (i: number) => ({ recipient: `g${i}@example.com`, token: i % 2 === 0 ? alpha.token : beta.token }),
      reason: "GLOBAL_BUDGET_EXHAUSTED",
    },
  ])("$limit: exactly 5 accepted, 995 RESOURCE_EXHAUSTED, exactly 5 mails", async ({ env, request, reason }) => {
    await fleet(env);
    const before = sink.transactions();
    const { codes, errors } = await burst(request);
    expect(Object.fromEntries(codes)).toEqual({ 0: 5, [grpc.status.RESOURCE_EXHAUSTED]: 995 });
    for (const error of errors) expect(detailsOf(error).errorInfo?.reason).toBe(reason);
    expect(sink.transactions() - before).toBe(5);
  });

  it("keeps every limit key in the {limits} slot, a code set with its failure log, every key with a TTL", async () => {
    await fleet({});
    const auth = bearer(alpha.token);
    const request = { recipient: "layout@example.com", purpose: Purpose.LOGIN };
    await call(instances[0].client, sendOtp, { ...request, endUserIp: "192.0.2.1", code: "1234" }, auth);
    await call(instances[1].client, verifyOtp, { ...request, code: "9999" }, auth);

    const limitSlots = new Set<number>();
    const verifySlots = new Set<number>();
    const withoutTtl: string[] = [];
    let limitKeys = 0;
    let verifyKeys = 0;
    for (const node of cluster.nodes) {
      for (const prefix of prefixes) {
        const keys = await scanPrefix(node, prefix);
        for (const key of keys) {
          if ((await node.pttl(key)) === -1) withoutTtl.push(key);
          if (key.startsWith(`${prefix}{limits}:`)) {
            limitKeys += 1;
            limitSlots.add(Number(await node.cluster("KEYSLOT", key)));
          }
          // The code set and the verify-failure log of one caller and recipient: one slot, one script.
          if (prefix === prefixes.at(-1) && (key.startsWith(`${prefix}code:{`) || key.startsWith(`${prefix}fail:{`))) {
            verifyKeys += 1;
            verifySlots.add(Number(await node.cluster("KEYSLOT", key)));
          }
        }
      }
    }
    expect(withoutTtl).toEqual([]);
    expect(limitKeys).toBeGreaterThanOrEqual(5);
    expect(limitSlots).toEqual(new Set([Number(await cluster.nodes[0].cluster("KEYSLOT", "{limits}"))]));
    expect(verifyKeys).toBe(2);
    expect(verifySlots.size).toBe(1);

    // Verified in one script on the cluster: of concurrent right guesses across instances, exactly one wins.
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => call(instances[i % 3].client, verifyOtp, { ...request, code: "1234" }, auth)),
    );
    expect(results.map((r) => r.result).sort()).toEqual([VerifyResult.VERIFIED, ...Array<VerifyResult>(11).fill(VerifyResult.NOT_FOUND)].sort());
  });

  it("an idempotent replay on another instance reads resend_available_at from the limits (the read-only script in the {limits} slot)", async () => {
    await fleet({ LIMIT_RESEND_COOLDOWN: "30s" });
    const request = { recipient: "replay@example.com", purpose: Purpose.LOGIN, idempotencyKey: "cluster-replay-1" };
    const first = await call(instances[0].client, sendOtp, request, bearer(alpha.token));
    const replayed = await call(instances[1].client, sendOtp, request, bearer(alpha.token));
    expect(replayed.messageId).toBe(first.messageId);
    expect(replayed.resendAvailableAt).toEqual(first.resendAvailableAt);
    const logs = instances.flatMap((instance) => instance.logs);
    expect(logs.filter((entry) => /could not read the limits/.test(String(entry["msg"])))).toEqual([]);
  });

  it("reads a delivery record with its reports in one script on the cluster (both keys in the message's slot)", async () => {
    const store = createRedisStore({ url: cluster.seeds, cluster: true, prefix: randomPrefix(), logger: createLogger({ level: "silent" }) });
    try {
      const record: DeliveryRecord = {
        messageId: "01jcluster0000000000000000",
        caller: "alpha",
        state: "ACCEPTED",
        recipientMasked: "c***@example.com",
        recipientDomain: "example.com",
        purpose: "login",
        locale: "en",
        createdAt: 1_700_000_000_000,
        updatedAt: 1_700_000_000_500,
        expiresAt: 1_700_000_300_000,
        attempts: [],
        traceId: "",
      };
      const bounce: DeliveryReport = {
        receivedAt: 1_700_000_001_000,
        action: "failed",
        status: "5.1.1",
        diagnosticCode: "smtp; 550 5.1.1 no such user",
        remoteMta: "mx.example.com",
        reportingMta: "relay.example",
        finalRecipient: "c***@example.com",
        envelopeId: "",
      };
      await store.putRecord(record, 60_000);
      await store.addDeliveryReport(record.messageId, bounce, 60_000);
      expect(await store.getRecordWithReports(record.messageId)).toEqual([record, [bounce]]);
      expect(await store.getRecordWithReports("01jcluster0000000000000001")).toEqual([undefined, []]);
    } finally {
      await store.close();
    }
  });
});
