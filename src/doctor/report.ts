/**
 * Renders a doctor report: text for people (one line per check, its fix
 * under it), JSON for machines (the report as is).
 */
import type { Logger } from "../logger.js";
import type { CheckStatus, DoctorReport } from "./types.js";

const labels: Record<CheckStatus, string> = { pass: "PASS", warn: "WARN", fail: "FAIL" };

export function renderText(report: DoctorReport): string {
  const { context } = report;
  const lines = [
    `otp-email doctor: ${report.domain}`,
    `  From ${context.fromAddress}, envelope domain ${context.envelopeDomain}, DKIM d=${context.dkimDomain ?? "(not signing)"}`,
    `  relay ${context.relay ?? "(none: SMTP_URL not set)"}, relay IP ${context.relayIp ?? "unknown"} (${context.relayIpSource})`,
    "",
  ];
  const idWidth = Math.max(...report.checks.map((result) => result.id.length));
  for (const result of report.checks) {
    lines.push(`${labels[result.status]}  ${result.id.padEnd(idWidth)}  ${result.subject}: ${result.summary}`);
    if (result.fix !== "") lines.push(`      ${" ".repeat(idWidth)}  fix: ${result.fix}`);
  }
  lines.push("", `${report.ok ? "OK" : "NOT OK"}: ${report.counts.fail} fail, ${report.counts.warn} warn, ${report.counts.pass} pass`);
  return `${lines.join("\n")}\n`;
}

export function renderJson(report: DoctorReport): string {
  return `${JSON.stringify(report, null, 2)}\n`;
}

/**
 * Logs every check that is not a pass as a warning, and one summary line.
 * (Here rather than in doctor.ts so that logging a report does not load the checks.)
 */
export function logDoctorReport(report: DoctorReport, logger: Logger): void {
  const log = logger.child({ component: "doctor" });
  for (const result of report.checks) {
    if (result.status === "pass") continue;
    log.warn({ check: result.id, subject: result.subject, status: result.status, fix: result.fix }, result.summary);
  }
  log.info({ domain: report.domain, ...report.counts }, "sender-domain checks done (details: npm run doctor)");
}
