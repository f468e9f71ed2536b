/**
 * A real DNS server (dns2) on a free loopback port, UDP and TCP on the same
 * port, answering from fixture records: the records of a name and type, or
 * NODATA when the name exists with other types (or has names below it), or
 * NXDOMAIN. Names in `stall`, and names below them, are never answered, to
 * test timeouts.
 *
 *   const dns = await startDnsServer([txt("example.test", "v=spf1 -all")]);
 *   createDnsResolver({ servers: dns.servers, timeoutMs: 2000 });
 *   await dns.close();
 *
 * TXT data longer than 255 bytes is split into 255-byte character-strings,
 * as a zone file must (RFC 1035 3.3.14): resolvers see several strings.
 */
import { createServer as createNetServer } from "node:net";
import { createTCPServer, createUDPServer, Packet, type TCPServer, type UDPServer } from "dns2";

export type FixtureRecord =
  | { readonly name: string; readonly type: "A" | "AAAA"; readonly address: string }
  | { readonly name: string; readonly type: "MX"; readonly exchange: string; readonly priority: number }
  | { readonly name: string; readonly type: "TXT"; readonly strings: readonly string[] }
  | { readonly name: string; readonly type: "PTR"; readonly domain: string };

export const a = (name: string, address: string): FixtureRecord => ({ name, type: "A", address });
export const mx = (name: string, exchange: string, priority = 10): FixtureRecord => ({ name, type: "MX", exchange, priority });
/** A TXT record; `text` is split into 255-byte character-strings. */
export const txt = (name: string, text: string): FixtureRecord => ({ name, type: "TXT", strings: splitTxt(text) });

/** The PTR record of an IPv4 address: `192.0.2.10` -> `10.2.0.192.in-addr.arpa PTR host`. */
export const ptr = (ipv4: string, host: string): FixtureRecord => ({
  name: `${ipv4.split(".").reverse().join(".")}.in-addr.arpa`,
  type: "PTR",
  domain: host,
});

/** Splits text into character-strings of at most 255 bytes. */
export function splitTxt(text: string): string[] {
  const bytes = Buffer.from(text, "utf8");
  const strings: string[] = [];
  for (let offset = 0; offset < bytes.length; offset += 255) strings.push(bytes.subarray(offset, offset + 255).toString("utf8"));
  return strings.length === 0 ? [""] : strings;
}

export interface DnsFixtureServer {
  readonly port: number;
  /** For DNS_SERVERS / createDnsResolver: `["127.0.0.1:PORT"]`. */
  readonly servers: readonly string[];
  /** Every question received, as `TYPE name`. */
  readonly queries: string[];
  close(): Promise<void>;
}

export interface DnsFixtureOptions {
  /** Names (and every name below them) whose questions are never answered. */
  readonly stall?: readonly string[];
}

const typeCodes = { A: Packet.TYPE.A, AAAA: Packet.TYPE.AAAA, MX: Packet.TYPE.MX, TXT: Packet.TYPE.TXT, PTR: Packet.TYPE.PTR } as const;

export async function startDnsServer(records: readonly FixtureRecord[], options: DnsFixtureOptions = {}): Promise<DnsFixtureServer> {
  const normalized = records.map((record) => ({ ...record, name: normalize(record.name) }));
  const stall = new Set((options.stall ?? []).map(normalize));
  const queries: string[] = [];

  const exists = (name: string): boolean =>
    normalized.some((record) => record.name === name || record.name.endsWith(`.${name}`));

  const handle = (request: Packet, send: (response: Packet) => Promise<Buffer>): void => {
    const response = Packet.createResponseFromRequest(request);
    const question = request.questions[0];
    if (question === undefined) {
      void send(response);
      return;
    }
    const name = normalize(question.name);
    queries.push(`${Packet.typeName(question.type)} ${name}`);
    if ([...stall].some((stalled) => name === stalled || name.endsWith(`.${stalled}`))) return;
    for (const record of normalized) {
      if (record.name !== name || typeCodes[record.type] !== question.type) continue;
      const rdata =
        record.type === "MX"
          ? { exchange: record.exchange, priority: record.priority }
          : record.type === "TXT"
            ? { data: [...record.strings] }
            : record.type === "PTR"
              ? { domain: record.domain }
              : { address: record.address };
      response.answers.push(Packet.createResourceFromQuestion(question, { class: Packet.CLASS.IN, ttl: 60, ...rdata }));
    }
    if (response.answers.length === 0 && !exists(name)) response.header.rcode = Packet.RCODE.NXDOMAIN;
    void send(response).catch(() => undefined);
  };

  // UDP first on a free port, then TCP on the same port (retried if taken).
  for (let attempt = 0; ; attempt++) {
    const udp: UDPServer = createUDPServer({ type: "udp4" });
    udp.on("request", handle);
    udp.on("requestError", () => undefined);
    const port = await freeTcpPort();
    try {
      await bindUdp(udp, port);
    } catch (error) {
      udp.close();
      if (attempt < 10) continue;
      throw error;
    }
    const tcp: TCPServer = createTCPServer(handle);
    tcp.on("requestError", () => undefined);
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once("error", reject);
        tcp.once("listening", () => {
          tcp.off("error", reject);
          resolve();
        });
        tcp.listen(port, "127.0.0.1");
      });
    } catch (error) {
      udp.close();
      if (attempt < 10) continue;
      throw error;
    }
    tcp.on("error", () => undefined);
    let closing: Promise<void> | undefined;
    return {
      port,
      servers: [`127.0.0.1:${port}`],
      queries,
      close() {
        closing ??= Promise.all([
          new Promise<void>((resolve) => udp.close(() => resolve())),
          new Promise<void>((resolve) => tcp.close(() => resolve())),
        ]).then(() => undefined);
        return closing;
      },
    };
  }
}

function normalize(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

function bindUdp(udp: UDPServer, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    udp.once("error", reject);
    udp.bind(port, "127.0.0.1", () => {
      udp.off("error", reject);
      resolve();
    });
  });
}

async function freeTcpPort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("dns fixture: no free port");
  return address.port;
}
