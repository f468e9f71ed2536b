/**
 * The Node client (src/client.ts) under the service's bound on concurrent
 * calls per connection (GRPC_MAX_CONCURRENT_STREAMS): the real service on a
 * free port, called over a real socket by a fresh client, as a service that
 * has just started and sends a burst of calls would.
 */
import { once } from "node:events";
import { createServer, type AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createOtpEmailClient, errorDetailsOf, Code, Purpose } from "../../src/client.js";
import { startTestService, type TestService } from "../support/service.js";

let service: TestService | undefined;

beforeAll(async () => {
  service = await startTestService({ store: "memory", env: { GRPC_MAX_CONCURRENT_STREAMS: "2", LIMIT_RESEND_COOLDOWN: "0", LIMIT_RECIPIENT: "off" } });
});

afterAll(async () => {
  await service?.stop();
});

function started(): TestService {
  if (service === undefined) throw new Error("the service did not start (see beforeAll)");
  return service;
}

/** What each call ended with: "ok", or the code and message it failed with. */
async function outcomes(calls: Promise<unknown>[]): Promise<string[]> {
  const settled = await Promise.allSettled(calls);
  return settled.map((result) => {
    if (result.status === "fulfilled") return "ok";
    const details = errorDetailsOf(result.reason);
    return `${Code[details.code]}: ${details.message}`;
  });
}

describe("a burst of calls on a fresh Node client, to a service that takes 2 calls at once per connection", () => {
  it("every call is answered by the service: the client holds the calls over the bound instead of having them refused", async () => {
    const client = createOtpEmailClient({ baseUrl: `http://${started().address}` });
    const unknownId = "01kb2m7q3c5xw9p8h2g4r6t0vn";
    const answers = await outcomes(Array.from({ length: 10 }, () => client.getDeliveryStatus({ messageId: unknownId })));
    expect(answers).toEqual(Array(10).fill("NotFound: no message with this message_id (records are kept for a limited time)"));
  });

  it("every SendOtp of the burst sends its mail, once", async () => {
    const client = createOtpEmailClient({ baseUrl: `http://${started().address}` });
    const before = started().sink.messages.length;
    const sends = Array.from({ length: 6 }, (_, i) => client.sendOtp({ recipient: `burst${i}@example.com`, purpose: Purpose.LOGIN }));
    expect(await outcomes(sends)).toEqual(Array(6).fill("ok"));
    expect(await started().sink.waitForMessages(before + 6)).toHaveLength(before + 6);
  });
});

describe("a burst of calls on a fresh Node client, to a server that drops every connection", () => {
  it("the calls fail together on shared connection attempts, not one attempt after another", async () => {
    let connections = 0;
    const dropping = createServer((socket) => {
      connections++;
      socket.destroy();
    });
    dropping.listen(0, "127.0.0.1");
    await once(dropping, "listening");
    try {
      const client = createOtpEmailClient({ baseUrl: `http://127.0.0.1:${(dropping.address() as AddressInfo).port}` });
      const answers = await outcomes(Array.from({ length: 10 }, () => client.getDeliveryStatus({ messageId: "01kb2m7q3c5xw9p8h2g4r6t0vn" })));
      expect(answers.filter((answer) => answer === "ok")).toEqual([]);
      // The first call's connection, then one more shared by the calls that waited for it.
      expect(connections).toBeLessThanOrEqual(2);
    } finally {
      dropping.close();
    }
  });
});
