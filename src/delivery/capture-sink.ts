/**
 * The development mode's SMTP relay: a real SMTP server in-process on a free
 * loopback port, so nodemailer speaks real SMTP even with nothing configured.
 * Every message is written as an .eml file and logged on one line.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { simpleParser } from "mailparser";
import { SMTPServer } from "smtp-server";
import { maskAddress } from "../otp/address.js";
import type { Logger } from "../logger.js";

export interface CaptureSinkOptions {
  /** Folder for .eml files; created when missing. */
  readonly outboxDir: string;
  readonly logger: Logger;
  /**
   * Log each mail's subject, which carries the code. Development only: the
   * one place a code may reach a log, because there is no real inbox.
   */
  readonly showCodes: boolean;
  /** Largest message accepted; default 1 MiB. */
  readonly maxBytes?: number;
}

export interface CaptureSink {
  /** nodemailer URL for this sink (`smtp://127.0.0.1:PORT?starttls=off`). */
  readonly url: string;
  readonly port: number;
  /** How many messages were captured so far. */
  captured(): number;
  close(): Promise<void>;
}

export async function startCaptureSink(options: CaptureSinkOptions): Promise<CaptureSink> {
  const { logger } = options;
  await mkdir(options.outboxDir, { recursive: true });
  let count = 0;
  const server = new SMTPServer({
    name: "otp-email-capture",
    banner: "OtpEmail development capture sink; nothing leaves this machine",
    authOptional: true,
    disabledCommands: ["STARTTLS", "AUTH"],
    // Advertise DSN, as the relays the service is meant for do (smtp-server hides it by default): nodemailer
    // then sends RET/ENVID/NOTIFY, the record says a bounce was asked for, and a report fed to the development
    // bounce intake is one the message requested; no start-up warning about a relay the developer never chose.
    hideDSN: false,
    size: options.maxBytes ?? 1024 * 1024,
    logger: false,
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("error", (error) => callback(error));
      stream.on("end", () => {
        if ((stream as unknown as { sizeExceeded?: boolean }).sizeExceeded) {
          callback(Object.assign(new Error("552 message too large"), { responseCode: 552 }));
          return;
        }
        const raw = Buffer.concat(chunks);
        const sequence = ++count;
        const recipients = session.envelope.rcptTo.map((rcpt) => rcpt.address);
        const queueId = `cap${Date.now().toString(36)}${sequence}`;
        void capture(raw, recipients, queueId).catch((error: unknown) => {
          logger.warn({ err: error }, "capture sink could not store a message");
        });
        callback(null, `2.0.0 Ok: queued as ${queueId}`);
      });
    },
  });

  async function capture(raw: Buffer, recipients: string[], queueId: string): Promise<void> {
    const parsed = await simpleParser(raw);
    const file = join(options.outboxDir, `${new Date().toISOString().replace(/[:.]/g, "-")}-${queueId}.eml`);
    await writeFile(file, raw);
    logger.info(
      {
        captured: true,
        to: recipients.map(maskAddress),
        ...(options.showCodes ? { subject: parsed.subject ?? "" } : {}),
        file,
      },
      "captured email (development sink; not delivered)",
    );
  }

  server.on("error", (error) => logger.warn({ err: error }, "capture sink connection error"));
  const port = await new Promise<number>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.server.address();
      resolve(typeof address === "object" && address !== null ? address.port : 0);
    });
  });

  return {
    url: `smtp://127.0.0.1:${port}?starttls=off`,
    port,
    captured: () => count,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
