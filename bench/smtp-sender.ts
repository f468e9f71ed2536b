/**
 * The bench's own SMTP sender: the work the service does per message minus
 * gRPC and Redis (render, build, hand the finished message to nodemailer the
 * way the service does). The load generator uses it for the SMTP ceiling and
 * the naive design; the echo server uses it for the gRPC floor (a bare
 * grpc-js server whose SendOtp only sends).
 */
import { randomBytes } from "node:crypto";
import { createTransport, type Transporter } from "nodemailer";
import { buildOtpMail } from "../src/delivery/message.js";
import { pooledMessage, poolTransportOf, sendThroughPool } from "../src/delivery/pool-send.js";
import { createRenderer } from "../src/delivery/render.js";
import { nodemailerMessage } from "../src/delivery/smtp-transport.js";
import { generateCode, newMessageId } from "../src/otp/code.js";
import { createRandomPool } from "../src/random-pool.js";
import type { SmtpTarget } from "./protocol.js";

/** The sender the bench uses everywhere: its domain names the Message-ID. */
export const benchSender = { name: "Bench", address: "no-reply@bench.example" } as const;

/** A fresh, valid recipient per request: per-recipient limits never reject the bench. */
export function benchRecipient(runId: string, index: number): string {
  return `r${index}.${runId}@bench.example`;
}

/** What one send came to. */
export type SendOutcome = { readonly ok: true } | { readonly ok: false; readonly code: string; readonly message: string };

export interface BenchSmtpSender {
  /** Renders, builds and sends one message to `recipient`. */
  send(recipient: string): Promise<SendOutcome>;
  close(): void;
}

export function createBenchSmtpSender(target: SmtpTarget): BenchSmtpSender {
  const common = {
    host: target.host,
    port: target.port,
    secure: false,
    // Like the service: STARTTLS required and verified when the sink offers it.
    ...(target.tlsCa === undefined ? { ignoreTLS: true } : { requireTLS: true, tls: { ca: [target.tlsCa], minVersion: "TLSv1.2" as const } }),
    logger: false,
    debug: false,
    disableFileAccess: true,
    disableUrlAccess: true,
  } as const;
  // Pooled: what the service does. Not pooled: a new SMTP connection per message, what the classic wrapper did.
  const transporter: Transporter = target.pooled
    ? createTransport({ ...common, pool: true, maxConnections: target.poolSize, maxMessages: target.maxMessagesPerConnection })
    : createTransport({ ...common });
  const renderer = createRenderer({ defaultLocale: "en", productName: benchSender.name });
  const random = createRandomPool();
  // The service's own path: the finished message straight to nodemailer's
  // transport (pooled or not, both take it), sendMail only as its fallback.
  const direct = poolTransportOf(transporter);
  const signal = new AbortController().signal;
  return {
    async send(recipient) {
      const code = generateCode(6);
      const rendered = renderer.render({ purpose: "login", locale: "en", code, ttlMs: 600_000 });
      const mail = buildOtpMail({
        rendered,
        to: recipient,
        fromName: benchSender.name,
        fromAddress: benchSender.address,
        messageId: newMessageId(Date.now(), random),
        code,
      });
      try {
        // Exactly what the service hands nodemailer for this mail, the same way.
        const pooled = direct === undefined ? undefined : pooledMessage(mail, random);
        if (direct !== undefined && pooled !== undefined) await sendThroughPool(direct, pooled, signal);
        else await transporter.sendMail(nodemailerMessage(mail, random));
        return { ok: true };
      } catch (error) {
        const code = (error as { code?: unknown }).code;
        return { ok: false, code: typeof code === "string" ? code : "ERROR", message: (error as Error).message };
      }
    },
    close: () => transporter.close(),
  };
}

/** A run id for recipients' local parts. */
export const newSenderRunId = (): string => randomBytes(4).toString("hex");
