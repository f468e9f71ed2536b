/**
 * Renders a doctor report: text for people (one line per check, its fix
 * under it), JSON for machines (the report as is).
 */
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
