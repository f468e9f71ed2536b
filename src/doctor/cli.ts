/**
 * `npm run doctor -- [domain] [--json]`: checks what decides whether our mail
 * is delivered, junked or rejected, with the service's own configuration.
 *
 * Exit status: 0 when nothing failed (warnings allowed), 1 when a check
 * failed, 2 for a usage error, 78 (EX_CONFIG) for a configuration error.
 */
import { domainToASCII } from "node:url";
import { ConfigError, loadConfigFromProcess } from "../config.js";
import { doctorOptionsFromConfig, runDoctor } from "./doctor.js";
import { renderJson, renderText } from "./report.js";

const usage = `usage: npm run --silent doctor -- [domain] [--json]

Checks SPF, DKIM, DMARC, the bounce domain's MX, the relay (TLS, AUTH, DSN),
its reverse DNS (PTR) and DNSBL listings for the sender domain, using the
service's environment (MAIL_FROM, SMTP_URL, DKIM_*, BOUNCE_DOMAIN, RELAY_IP,
DNSBL_ZONES, DNS_SERVERS, DOCTOR_TIMEOUT). domain defaults to MAIL_FROM's
domain; an internationalized one may be typed in Unicode (checked as punycode).
Exit status: 0 nothing failed, 1 a check failed, 2 usage, 78 configuration.
`;

async function main(argv: readonly string[]): Promise<number> {
  const json = argv.includes("--json");
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(usage);
    return 0;
  }
  const unknown = argv.filter((arg) => arg.startsWith("-") && arg !== "--json");
  const positional = argv.filter((arg) => !arg.startsWith("-"));
  // An internationalized domain may be typed as it reads (`bücher.example`): DNS and MAIL_FROM know it as punycode.
  const given = positional[0];
  const domain = given === undefined || /^[\x21-\x7e]*$/.test(given) ? given : domainToASCII(given) || given;
  if (unknown.length > 0 || positional.length > 1 || (domain !== undefined && !/^(?:[A-Za-z0-9_-]+\.)+[A-Za-z0-9-]+\.?$/.test(domain))) {
    process.stderr.write(`otp-email doctor: ${unknown[0] !== undefined ? `unknown option ${unknown[0]}` : `expected one domain name, got ${positional.join(" ")}`}\n${usage}`);
    return 2;
  }

  let options;
  try {
    options = doctorOptionsFromConfig(loadConfigFromProcess(), domain?.replace(/\.$/, ""));
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`otp-email doctor: configuration error: ${error.message}\n`);
      return 78;
    }
    throw error;
  }
  const report = await runDoctor(options);
  process.stdout.write(json ? renderJson(report) : renderText(report));
  return report.ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`otp-email doctor: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
