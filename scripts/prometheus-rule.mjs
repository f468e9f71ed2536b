// Writes deploy/kubernetes/monitoring/prometheus-rule.yaml: the groups of
// deploy/prometheus/alerts.yml as a PrometheusRule for the Prometheus Operator.
// Run it after changing alerts.yml; test/integration/kubernetes.test.ts fails
// while the committed file differs from what this writes.
//
//   node scripts/prometheus-rule.mjs            write the file
//   node scripts/prometheus-rule.mjs --stdout   print it instead
//
// The groups are copied as text, indented under `spec:`, so the rules' comments
// and block scalars read as they do in alerts.yml; the result is parsed back and
// must equal alerts.yml's groups, or nothing is written.
import { readFileSync, writeFileSync } from "node:fs";
import { isDeepStrictEqual } from "node:util";
import { parse } from "yaml";

const source = "deploy/prometheus/alerts.yml";
const target = "deploy/kubernetes/monitoring/prometheus-rule.yaml";
const root = new URL("..", import.meta.url);

const alertsText = readFileSync(new URL(source, root), "utf8").replace(/\r\n/g, "\n");
const alerts = parse(alertsText, { uniqueKeys: true });
if (Object.keys(alerts ?? {}).join() !== "groups") throw new Error(`${source}: expected only a top-level \`groups\``);

// From `groups:` on; the file's header comment is about alerts.yml itself.
const lines = alertsText.split("\n");
const start = lines.indexOf("groups:");
if (start === -1) throw new Error(`${source}: no \`groups:\` line`);
const groups = lines
  .slice(start)
  .map((line) => (line === "" ? line : `  ${line}`))
  .join("\n")
  .trimEnd();

const rule = `# Generated from ${source} by scripts/prometheus-rule.mjs: change alerts.yml
# and run \`node scripts/prometheus-rule.mjs\`, not this file
# (test/integration/kubernetes.test.ts fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: otp-email
  labels:
    app.kubernetes.io/name: otp-email
spec:
${groups}
`;

const written = parse(rule, { uniqueKeys: true });
if (!isDeepStrictEqual(written.spec, { groups: alerts.groups })) {
  throw new Error(`${target}: the indented groups do not parse back to ${source}'s (a multi-line string indented by hand?)`);
}

if (process.argv.includes("--stdout")) process.stdout.write(rule);
else writeFileSync(new URL(target, root), rule);
