/**
 * Numbers the data path adds to without prom-client in the way, and the adapter that
 * shows them to a prom-client Registry at scrape time.
 *
 * prom-client's labelled children hash their label values into a string on every inc()
 * and observe() (about 0.4 µs and a little garbage per request, measured here). The data
 * path instead adds to plain fields (`Latency`), and `SampledMetric` reads them only when
 * /metrics is scraped. It implements the small interface Registry.metrics() uses: name,
 * help, type, and get() returning the samples. State gauges use it too, with samples
 * computed from a provider's answer: a series that cannot be known is left out, where a
 * prom-client Gauge without labels would show a reset 0 (no degraded volumes, no space).
 */
import type { Metric, Registry } from 'prom-client'

/** Upper bounds (seconds) of the latency buckets: 50 µs (a cached local read) to 10 s (a peer timing out). */
export const LATENCY_BUCKETS: readonly number[] = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]

/** Latency of one kind of operation: per-bucket counts, a sum and a count. Recording allocates nothing. */
export class Latency {
  /** Samples per bucket (not cumulative); samples above the last bound count only in `count`. */
  readonly buckets = new Float64Array(LATENCY_BUCKETS.length)
  sum = 0
  count = 0

  observe(seconds: number): void {
    this.sum += seconds
    this.count++
    const bounds = LATENCY_BUCKETS
    for (let i = 0; i < bounds.length; i++) {
      if (seconds <= bounds[i]!) {
        this.buckets[i]!++
        return
      }
    }
  }
}

export interface Sample {
  value: number
  labels: Record<string, string | number>
  /** For histograms: name_bucket, name_sum, name_count. */
  metricName?: string
}

export interface SampledMetricOptions {
  name: string
  help: string
  type: 'counter' | 'gauge' | 'histogram'
  /** Called on every scrape; may be async (state asked of a provider). */
  samples: () => Sample[] | Promise<Sample[]>
}

/** A metric whose samples are computed at scrape time from numbers kept elsewhere. */
export class SampledMetric {
  readonly name: string
  readonly help: string
  readonly type: SampledMetricOptions['type']
  readonly aggregator = 'sum'
  readonly #samples: SampledMetricOptions['samples']

  constructor(o: SampledMetricOptions) {
    this.name = o.name
    this.help = o.help
    this.type = o.type
    this.#samples = o.samples
  }

  register(registry: Registry): this {
    registry.registerMetric(this as unknown as Metric)
    return this
  }

  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: Sample[] }> {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: await this.#samples() }
  }

  /** Registry.resetMetrics() calls this; the numbers belong to their owners, so it does nothing. */
  reset(): void {}
}

/** Histogram samples (cumulative buckets, +Inf, sum, count) for each labelled Latency. */
export function histogramSamples(name: string, series: Iterable<[Record<string, string>, Latency]>): Sample[] {
  const out: Sample[] = []
  const bucket = `${name}_bucket`
  for (const [labels, latency] of series) {
    let acc = 0
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) {
      acc += latency.buckets[i]!
      out.push({ metricName: bucket, labels: { ...labels, le: LATENCY_BUCKETS[i]! }, value: acc })
    }
    out.push({ metricName: bucket, labels: { ...labels, le: '+Inf' }, value: latency.count })
    out.push({ metricName: `${name}_sum`, labels, value: latency.sum })
    out.push({ metricName: `${name}_count`, labels, value: latency.count })
  }
  return out
}
