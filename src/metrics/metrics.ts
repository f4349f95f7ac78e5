/**
 * Prometheus metrics of one pxd node, on a Registry of its own (never prom-client's
 * global one), served at GET /metrics by the API server.
 *
 * Two kinds of numbers, gathered two ways:
 * - Per request (bytes, operations, latency, errors, checksum failures, repairs): the data
 *   path holds a `VolumeIo` per volume (`metrics.volume(name)`, cached) and calls its
 *   methods, which add to plain numbers: no label strings, maps or allocations per request.
 *   `recordRead(volume, ...)` and friends do the same after one Map lookup.
 * - State (replicas in sync and online, degraded volumes, peers, capacity): asked of the
 *   providers the daemon gives (`provide`) only when /metrics is scraped, in the gauges'
 *   collect step, each provider once per scrape however many gauges use its answer. A provider that fails leaves its
 *   gauges empty for that scrape and counts in pxd_metrics_collect_errors_total.
 *
 * Metric names are in METRIC (one place, so tests and dashboards agree).
 */
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import type { Logger } from 'pino'
import { Latency, SampledMetric, histogramSamples, type Sample } from './sampled'

export const METRIC = {
  readBytes: 'pxd_volume_read_bytes_total',
  writeBytes: 'pxd_volume_write_bytes_total',
  reads: 'pxd_volume_reads_total',
  writes: 'pxd_volume_writes_total',
  flushes: 'pxd_volume_flushes_total',
  readSeconds: 'pxd_volume_read_duration_seconds',
  writeSeconds: 'pxd_volume_write_duration_seconds',
  flushSeconds: 'pxd_volume_flush_duration_seconds',
  ioErrors: 'pxd_volume_io_errors_total',
  checksumFailures: 'pxd_volume_checksum_failures_total',
  repairs: 'pxd_volume_repairs_total',
  replicaInSync: 'pxd_volume_replica_in_sync',
  replicaOnline: 'pxd_volume_replica_online',
  replicaAllocated: 'pxd_volume_replica_allocated_bytes',
  volumeSnapshots: 'pxd_volume_snapshots',
  volumeDegraded: 'pxd_volume_degraded',
  volumes: 'pxd_volumes',
  volumesDegraded: 'pxd_volumes_degraded',
  peerUp: 'pxd_peer_up',
  peerLinkState: 'pxd_peer_link_state',
  peerRtt: 'pxd_peer_link_rtt_seconds',
  fuseInFlight: 'pxd_fuse_requests_in_flight',
  capacity: 'pxd_capacity_bytes',
  capacityFree: 'pxd_capacity_free_bytes',
  shareOps: 'pxd_share_client_operations_total',
  shareBytes: 'pxd_share_client_bytes_total',
  resyncScanned: 'pxd_volume_resync_done_bytes',
  resyncRemaining: 'pxd_volume_resync_remaining_bytes',
  resyncCopied: 'pxd_volume_resync_copied_bytes',
  oldestDegraded: 'pxd_volumes_oldest_degraded_seconds',
  replacements: 'pxd_replica_replacements_total',
  replicaWritten: 'pxd_replica_written_bytes_total',
  info: 'pxd_info',
  collectErrors: 'pxd_metrics_collect_errors_total',
} as const

export type IoOp = 'read' | 'write' | 'flush'

/**
 * The I/O numbers of one volume on this node. Methods only add to fields; scrapes read them.
 * Its shape (checksumFailure, repaired) is what the volume engine's events hook expects.
 */
export class VolumeIo {
  readonly volume: string
  readBytes = 0
  writeBytes = 0
  readonly readLatency = new Latency()
  readonly writeLatency = new Latency()
  readonly flushLatency = new Latency()
  readErrors = 0
  writeErrors = 0
  flushErrors = 0
  checksumFailures = 0
  repairs = 0
  /** Attachments using this handle; a handle in use is never dropped. */
  users = 0

  constructor(volume: string) {
    this.volume = volume
  }

  read(bytes: number, seconds: number): void {
    this.readBytes += bytes
    this.readLatency.observe(seconds)
  }

  write(bytes: number, seconds: number): void {
    this.writeBytes += bytes
    this.writeLatency.observe(seconds)
  }

  flush(seconds: number): void {
    this.flushLatency.observe(seconds)
  }

  failed(op: IoOp): void {
    if (op === 'read') this.readErrors++
    else if (op === 'write') this.writeErrors++
    else this.flushErrors++
  }

  /** A replica's block did not match its crc32c. */
  checksumFailure(): void {
    this.checksumFailures++
  }

  /** A bad block was rewritten from a good replica. */
  repaired(): void {
    this.repairs++
  }
}

/** What the metrics need of a volume (VolumeInfo fits). */
export interface VolumeState {
  name: string
  state: string
  degraded: boolean
  degradedSince?: string | null
  replicas: ReadonlyArray<{ nodeId: string; inSync: boolean; online: boolean; allocatedBytes?: number | null }>
  lastResync?: { nodeId: string; state: string; totalBytes: number; scannedBytes: number; copiedBytes: number } | null
  /** A snapshot's volume (none for a volume), and a volume's snapshots. */
  parent?: string | null
  readOnly?: boolean
  snapshots?: ReadonlyArray<unknown>
}

/** This node's healing counters. */
export interface HealingState {
  /** Replicas this node placed to replace lost, drained or moved ones. */
  replacements: number
  /** Bytes written to the replicas this node holds (by any coordinator, resync copies included). */
  replicaWrittenBytes: number
}

export const PEER_LINK_STATES = ['none', 'connecting', 'ready', 'down'] as const
export type PeerLinkState = (typeof PEER_LINK_STATES)[number]

/** Another node as this one sees it: its lease (online) and this node's link to it. */
export interface PeerState {
  peer: string
  online: boolean
  /** `none`: no link made yet (links connect when a volume first needs the peer). */
  link: PeerLinkState
  rttMs?: number | undefined
}

/** What a shared volume served here received from one client node since it began serving. */
export interface ShareClientState { volume: string; client: string; ops: number; bytes: number }

export interface MetricsProviders {
  volumes?: () => Promise<VolumeState[]>
  shares?: () => Promise<ShareClientState[]>
  peers?: () => Promise<PeerState[]>
  capacity?: () => Promise<{ total: number; free: number }>
  healing?: () => Promise<HealingState>
}

export interface MetricsOptions {
  /** Node.js process metrics (CPU, memory, event loop lag, GC, handles). Default true. */
  defaultMetrics?: boolean
  providers?: MetricsProviders
  log?: Logger
}

export class Metrics {
  readonly registry = new Registry()
  readonly #ios = new Map<string, VolumeIo>()
  readonly #providers: MetricsProviders = {}
  readonly #log: Logger | undefined
  readonly #collectErrors = new Map<keyof MetricsProviders, number>()
  readonly #info: Gauge<string>
  readonly #pending = new Map<keyof MetricsProviders, Promise<unknown>>()
  #fuseInFlight = 0

  constructor(options: MetricsOptions = {}) {
    this.#log = options.log
    if (options.providers) this.provide(options.providers)
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry })
    this.#info = new Gauge({ name: METRIC.info, help: 'Always 1; labels say which node and version this is', labelNames: ['node', 'version', 'kvdb'], registers: [this.registry] })
    this.#ioMetrics()
    this.#stateMetrics()
  }

  /** The cached I/O handle of a volume; hold it on the data path. */
  volume(name: string): VolumeIo {
    let io = this.#ios.get(name)
    if (io === undefined) {
      io = new VolumeIo(name)
      this.#ios.set(name, io)
    }
    return io
  }

  recordRead(volume: string, bytes: number, seconds: number): void {
    this.volume(volume).read(bytes, seconds)
  }

  recordWrite(volume: string, bytes: number, seconds: number): void {
    this.volume(volume).write(bytes, seconds)
  }

  recordFlush(volume: string, seconds: number): void {
    this.volume(volume).flush(seconds)
  }

  recordIoError(volume: string, op: IoOp): void {
    this.volume(volume).failed(op)
  }

  recordChecksumFailure(volume: string): void {
    this.volume(volume).checksumFailure()
  }

  recordRepair(volume: string): void {
    this.volume(volume).repaired()
  }

  /** A FUSE request was handed to a volume and is not answered yet. */
  fuseRequestStarted(): void {
    this.#fuseInFlight++
  }

  fuseRequestEnded(): void {
    this.#fuseInFlight--
  }

  get fuseRequestsInFlight(): number {
    return this.#fuseInFlight
  }

  /** Set (or replace) state providers. */
  provide(providers: MetricsProviders): void {
    Object.assign(this.#providers, providers)
  }

  /** Set only the providers not set yet (the API server fills in what it can from the manager). */
  provideMissing(providers: MetricsProviders): void {
    for (const key of Object.keys(providers) as Array<keyof MetricsProviders>) {
      if (this.#providers[key] === undefined) Object.assign(this.#providers, { [key]: providers[key] })
    }
  }

  setInfo(labels: { node: string; version: string; kvdb: string }): void {
    this.#info.reset()
    this.#info.set(labels, 1)
  }

  get contentType(): string {
    return this.registry.contentType
  }

  /** The Prometheus text exposition of every metric; asks each provider once. */
  text(): Promise<string> {
    return this.registry.metrics()
  }

  #ioMetrics(): void {
    const ios = () => [...this.#ios.values()]
    const counter = (name: string, help: string, value: (io: VolumeIo) => number) =>
      new SampledMetric({ name, help, type: 'counter', samples: () => ios().map((io) => ({ labels: { volume: io.volume }, value: value(io) })) }).register(this.registry)
    const histogram = (name: string, help: string, latency: (io: VolumeIo) => Latency) =>
      new SampledMetric({ name, help, type: 'histogram', samples: () => histogramSamples(name, ios().map((io) => [{ volume: io.volume }, latency(io)])) }).register(this.registry)

    counter(METRIC.readBytes, 'Bytes read from the volume through FUSE', (io) => io.readBytes)
    counter(METRIC.writeBytes, 'Bytes written to the volume through FUSE (acknowledged by every in-sync replica)', (io) => io.writeBytes)
    counter(METRIC.reads, 'Read requests completed', (io) => io.readLatency.count)
    counter(METRIC.writes, 'Write requests completed', (io) => io.writeLatency.count)
    counter(METRIC.flushes, 'Flush (fsync) requests completed', (io) => io.flushLatency.count)
    histogram(METRIC.readSeconds, 'Time from a FUSE read request to its answer', (io) => io.readLatency)
    histogram(METRIC.writeSeconds, 'Time from a FUSE write request to its acknowledgement', (io) => io.writeLatency)
    histogram(METRIC.flushSeconds, 'Time from a FUSE flush or fsync to its answer', (io) => io.flushLatency)
    new SampledMetric({
      name: METRIC.ioErrors,
      help: 'Requests answered with an error, by operation',
      type: 'counter',
      samples: () => ios().flatMap((io): Sample[] => [
        { labels: { volume: io.volume, op: 'read' }, value: io.readErrors },
        { labels: { volume: io.volume, op: 'write' }, value: io.writeErrors },
        { labels: { volume: io.volume, op: 'flush' }, value: io.flushErrors },
      ]),
    }).register(this.registry)
    counter(METRIC.checksumFailures, 'Replica reads whose block did not match its crc32c', (io) => io.checksumFailures)
    counter(METRIC.repairs, 'Bad blocks rewritten from a good replica', (io) => io.repairs)
    new SampledMetric({
      name: METRIC.fuseInFlight,
      help: 'FUSE requests handed to a volume and not answered yet (the FUSE queue depth)',
      type: 'gauge',
      samples: () => [{ labels: {}, value: this.#fuseInFlight }],
    }).register(this.registry)
  }

  #stateMetrics(): void {
    const gauge = <T>(name: string, help: string, source: keyof MetricsProviders, samples: (data: T) => Sample[], type: 'gauge' | 'counter' = 'gauge'): void => {
      new SampledMetric({
        name, help, type,
        samples: async () => {
          const data = await this.#ask(source)
          return data === undefined ? [] : samples(data as T)
        },
      }).register(this.registry)
    }

    // Asks every provider itself (sharing the scrape's calls), so this scrape's failures count in it.
    new SampledMetric({
      name: METRIC.collectErrors,
      help: 'Scrapes in which a state provider failed, by provider',
      type: 'counter',
      samples: async () => {
        await Promise.all((Object.keys(this.#providers) as Array<keyof MetricsProviders>).map((source) => this.#ask(source)))
        return [...this.#collectErrors].map(([source, value]) => ({ labels: { source }, value }))
      },
    }).register(this.registry)

    const cluster = '(the cluster-wide view: the same on every node)'
    gauge<VolumeState[]>(METRIC.replicaInSync, `1 when the replica holds every acknowledged write ${cluster}`, 'volumes', (vols) =>
      vols.flatMap((v) => v.replicas.map((r) => ({ labels: { volume: v.name, replica: r.nodeId }, value: r.inSync ? 1 : 0 }))))
    gauge<VolumeState[]>(METRIC.replicaOnline, `1 when the replica's node holds its lease ${cluster}`, 'volumes', (vols) =>
      vols.flatMap((v) => v.replicas.map((r) => ({ labels: { volume: v.name, replica: r.nodeId }, value: r.online ? 1 : 0 }))))
    gauge<VolumeState[]>(METRIC.replicaAllocated, `Host bytes the replica's files take on its node, as it last reported them (discards give them back) ${cluster}`, 'volumes', (vols) =>
      vols.flatMap((v) => v.replicas.flatMap((r) => (typeof r.allocatedBytes === 'number' ? [{ labels: { volume: v.name, replica: r.nodeId }, value: r.allocatedBytes }] : []))))
    gauge<VolumeState[]>(METRIC.volumeSnapshots, `Snapshots of the volume ${cluster}`, 'volumes', (vols) =>
      vols.filter((v) => !v.readOnly).map((v) => ({ labels: { volume: v.name }, value: v.snapshots?.length ?? 0 })))
    gauge<VolumeState[]>(METRIC.volumeDegraded, `1 when the volume has fewer in-sync replicas on online nodes than repl ${cluster}`, 'volumes', (vols) =>
      vols.map((v) => ({ labels: { volume: v.name }, value: v.degraded ? 1 : 0 })))
    gauge<VolumeState[]>(METRIC.volumes, `Volumes by state ${cluster}`, 'volumes', (vols) => {
      const attached = vols.filter((v) => v.state === 'attached').length
      return [{ labels: { state: 'attached' }, value: attached }, { labels: { state: 'detached' }, value: vols.length - attached }]
    })
    gauge<VolumeState[]>(METRIC.volumesDegraded, `Volumes with fewer in-sync replicas on online nodes than repl ${cluster}`, 'volumes', (vols) =>
      [{ labels: {}, value: vols.filter((v) => v.degraded).length }])
    gauge<PeerState[]>(METRIC.peerUp, '1 when the peer node holds its lease in the metadata store', 'peers', (peers) =>
      peers.map((p) => ({ labels: { peer: p.peer }, value: p.online ? 1 : 0 })))
    gauge<PeerState[]>(METRIC.peerLinkState, 'This node\'s replication link to the peer: 1 for its current state', 'peers', (peers) =>
      peers.flatMap((p) => PEER_LINK_STATES.map((state) => ({ labels: { peer: p.peer, state }, value: p.link === state ? 1 : 0 }))))
    gauge<PeerState[]>(METRIC.peerRtt, 'Round trip of the last ping on the link to the peer', 'peers', (peers) =>
      peers.flatMap((p) => (p.rttMs === undefined ? [] : [{ labels: { peer: p.peer }, value: p.rttMs / 1000 }])))
    const since = '(counted since this node began serving the volume)'
    gauge<ShareClientState[]>(METRIC.shareOps, `File operations a client node sent to a shared volume served here ${since}`, 'shares', (cs) =>
      cs.map((c) => ({ labels: { volume: c.volume, client: c.client }, value: c.ops })), 'counter')
    gauge<ShareClientState[]>(METRIC.shareBytes, `Bytes of requests and replies between a client node and a shared volume served here ${since}`, 'shares', (cs) =>
      cs.map((c) => ({ labels: { volume: c.volume, client: c.client }, value: c.bytes })), 'counter')
    const running = (vols: VolumeState[]) => vols.flatMap((v) => (v.lastResync?.state === 'running' ? [{ v, r: v.lastResync }] : []))
    gauge<VolumeState[]>(METRIC.resyncScanned, `Bytes a running resync has compared so far ${cluster}`, 'volumes', (vols) =>
      running(vols).map(({ v, r }) => ({ labels: { volume: v.name, replica: r.nodeId }, value: r.scannedBytes })))
    gauge<VolumeState[]>(METRIC.resyncRemaining, `Bytes a running resync has still to compare ${cluster}`, 'volumes', (vols) =>
      running(vols).map(({ v, r }) => ({ labels: { volume: v.name, replica: r.nodeId }, value: r.totalBytes - r.scannedBytes })))
    gauge<VolumeState[]>(METRIC.resyncCopied, `Bytes a running resync has copied so far ${cluster}`, 'volumes', (vols) =>
      running(vols).map(({ v, r }) => ({ labels: { volume: v.name, replica: r.nodeId }, value: r.copiedBytes })))
    gauge<VolumeState[]>(METRIC.oldestDegraded, `How long the volume that has been degraded longest has been so (0: none is) ${cluster}`, 'volumes', (vols) => {
      const since = vols.filter((v) => v.degraded && v.degradedSince).map((v) => Date.parse(v.degradedSince!))
      return [{ labels: {}, value: since.length === 0 ? 0 : Math.max(0, (Date.now() - Math.min(...since)) / 1000) }]
    })
    gauge<HealingState>(METRIC.replacements, 'Replicas this node placed to replace lost, drained or moved ones', 'healing', (h) => [{ labels: {}, value: h.replacements }], 'counter')
    gauge<HealingState>(METRIC.replicaWritten, 'Bytes written to the replicas this node holds, by any coordinator (resync copies included)', 'healing', (h) => [{ labels: {}, value: h.replicaWrittenBytes }], 'counter')
    gauge<{ total: number; free: number }>(METRIC.capacity, 'Size of the file system holding this node\'s data dir', 'capacity', (c) => [{ labels: {}, value: c.total }])
    gauge<{ total: number; free: number }>(METRIC.capacityFree, 'Free space of the file system holding this node\'s data dir', 'capacity', (c) => [{ labels: {}, value: c.free }])
  }

  /**
   * A provider's answer for this scrape. Every gauge of a scrape is collected in the same
   * tick, so they share one in-flight call; the next scrape asks again.
   */
  #ask(source: keyof MetricsProviders): Promise<unknown> {
    const provider = this.#providers[source]
    if (provider === undefined) return Promise.resolve(undefined)
    let pending = this.#pending.get(source)
    if (pending === undefined) {
      pending = Promise.resolve()
        .then((): Promise<unknown> => provider())
        .then((data: unknown) => {
          if (source === 'volumes') this.#dropUnused(data as VolumeState[])
          return data
        }, (err: unknown) => {
          this.#collectErrors.set(source, (this.#collectErrors.get(source) ?? 0) + 1)
          this.#log?.warn({ err, source }, 'a metrics provider failed; its gauges are empty in this scrape')
          return undefined
        })
        .finally(() => this.#pending.delete(source))
      this.#pending.set(source, pending)
    }
    return pending
  }

  /** Forget the I/O numbers of volumes that no longer exist and are not attached here. */
  #dropUnused(volumes: VolumeState[]): void {
    const names = new Set(volumes.map((v) => v.name))
    for (const [name, io] of this.#ios) if (io.users === 0 && !names.has(name)) this.#ios.delete(name)
  }
}
