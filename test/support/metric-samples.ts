/**
 * Reading one sample of a prom-client registry in tests, as Prometheus would
 * scrape it: by sample name (a histogram's `_bucket`, `_sum` or `_count`
 * too) and exact labels.
 */
import type { OpenMetricsContentType, PrometheusContentType, Registry } from "prom-client";

/** One sample's value, by name and exact labels; undefined when the series does not exist. */
export async function sampleValue(
  registry: Registry<PrometheusContentType | OpenMetricsContentType>,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  for (const metric of await registry.getMetricsAsJSON()) {
    for (const value of metric.values) {
      const metricName = (value as { metricName?: string }).metricName ?? metric.name;
      if (metricName !== name) continue;
      const actual = value.labels as Record<string, string | number>;
      const keys = Object.keys(actual);
      if (keys.length === Object.keys(labels).length && keys.every((key) => String(actual[key]) === labels[key])) return value.value;
    }
  }
  return undefined;
}
