/**
 * The CRLs in use (TLS_CLIENT_CRL) in otp_tls_client_crl_next_update_timestamp_seconds,
 * one series per client CA, and the warning when one expires within 6 hours
 * or is still to come (clock skew).
 */
import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/logger.js";
import { reportClientCrlExpiry } from "../../src/telemetry/certificate-expiry.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import type { ClientCrlAuthority } from "../../src/tls/client-crl.js";
import { sampleValue } from "../support/metric-samples.js";

const now = Date.UTC(2026, 10, 29, 12, 0, 0);
const hour = 3_600_000;

function setup() {
  const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString("utf8").split("\n")) if (line.trim() !== "") lines.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  const logger = createLogger({ level: "info", destination });
  const report = (authorities: ClientCrlAuthority[]) =>
    reportClientCrlExpiry({ pems: [], authorities }, { metrics, logger, clock: { now: () => now }, reloadable: true });
  const nextUpdate = (issuer: string) => sampleValue(metrics.registry, "otp_tls_client_crl_next_update_timestamp_seconds", { issuer });
  return { lines, report, nextUpdate };
}

describe("reportClientCrlExpiry", () => {
  it("sets each client CA's series to its CRL's nextUpdate and warns of one that expires within 6 hours", async () => {
    const { lines, report, nextUpdate } = setup();
    report([
      { subject: "CN=A", nextUpdate: now + 5 * hour },
      { subject: "CN=B", nextUpdate: now + 7 * hour },
      { subject: "CN=C", nextUpdate: undefined },
    ]);
    expect(await nextUpdate("CN=A")).toBe((now + 5 * hour) / 1000);
    expect(await nextUpdate("CN=B")).toBe((now + 7 * hour) / 1000);
    expect(await nextUpdate("CN=C")).toBeUndefined();
    expect(lines).toEqual([
      expect.objectContaining({
        level: "warn",
        issuer: "CN=A",
        hours_left: 5,
        msg: expect.stringMatching(/^the CRL of CN=A \(TLS_CLIENT_CRL\) expires in 5 hours, and then TLS refuses every client certificate of that CA/) as string,
      }),
    ]);
  });

  it("drops the series of a CA no longer configured", async () => {
    const { report, nextUpdate } = setup();
    report([{ subject: "CN=A", nextUpdate: now + 48 * hour }]);
    report([{ subject: "CN=B", nextUpdate: now + 48 * hour }]);
    expect(await nextUpdate("CN=A")).toBeUndefined();
    expect(await nextUpdate("CN=B")).toBe((now + 48 * hour) / 1000);
  });

  it("warns of a CA whose CRL is still to come, naming it, its thisUpdate and clock skew: what TLS does until then; an error beyond what start-up takes", () => {
    const { lines, report } = setup();
    report([
      { subject: "CN=A", nextUpdate: now + 48 * hour, pending: { thisUpdate: now + 90_000, kept: true } },
      { subject: "CN=B", nextUpdate: now + 48 * hour, pending: { thisUpdate: now + 4 * 60_000, kept: false } },
      { subject: "CN=C", nextUpdate: now + 48 * hour, pending: { thisUpdate: now + 3 * hour, kept: true } },
    ]);
    expect(lines).toEqual([
      expect.objectContaining({
        level: "warn",
        issuer: "CN=A",
        this_update: "2026-11-29T12:01:30.000Z",
        clock: "2026-11-29T12:00:00.000Z",
        crl_in_force_kept: true,
        msg:
          "the new CRL of CN=A (TLS_CLIENT_CRL) is not valid until 2026-11-29T12:01:30.000Z (its thisUpdate, 90 s ahead of this host's clock: clock skew?): " +
          "TLS keeps using the CRL in force for that CA until then, and the new one from then on",
      }),
      expect.objectContaining({
        level: "warn",
        issuer: "CN=B",
        crl_in_force_kept: false,
        msg:
          "the CRL of CN=B (TLS_CLIENT_CRL) is not valid until 2026-11-29T12:04:00.000Z (its thisUpdate, 4 min ahead of this host's clock: clock skew?): " +
          "TLS refuses every client certificate of that CA until then (certificate_refusal crl_not_yet_valid)",
      }),
      expect.objectContaining({
        level: "error",
        issuer: "CN=C",
        msg: expect.stringMatching(/ahead of this host's clock: clock skew\?\): .*\. The service would not start with this file \(exit 78, more than 5 min ahead\)/) as string,
      }),
    ]);
  });
});
