/**
 * A randomized fault campaign, the way Jepsen tests databases. A cluster of three nodes,
 * each in its own network namespace with its data dir on the power-loss file system, holds
 * a repl=2 and a repl=3 volume. Each round:
 *   1. a record writer (fsynced, self-checking records; on the repl=2 volume in batches with
 *      direct I/O and one fsync each) and fio (fsync after every write, --verify) run on each
 *      volume's coordinator;
 *   2. the nemesis, drawing from the seed, injects one fault: kill -9 of a coordinator or a
 *      replica, power loss of a node, a node cut from etcd, from one peer (both ways or one
 *      way), or from everything, a stalled disk, a failing fsync, an etcd restart;
 *   3. it heals: network back, dead nodes restarted, each volume mounted on a live node,
 *      every replica back in sync.
 * At the end, for each volume: fail over to every replica in turn and check that every
 * record any writer saw acknowledged is there and intact; scrub finds nothing bad; the
 * replicas' data and checksum files are byte-identical. The seed is printed; a seed replays
 * the same choices (timings on a real machine still vary).
 */
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import type { VolumeInfo } from '../../src/volumes/types'
import { startCluster, waitFor, type ClusterNode } from '../helpers/cluster'
import { checkRecords, startRecordWriter, type RecordWriter } from '../helpers/records'
import { runFio, type CommandResult } from '../helpers/run'
import { pluginOk, replicaDigest } from '../helpers/volume-io'
import { mulberry32 } from './power-loss-fs'

export const FAULTS = [
  'kill-coordinator', 'kill-replica', 'power-loss', 'cut-from-etcd', 'cut-from-peer', 'cut-one-way',
  'isolate', 'stall-disk', 'fail-fsync', 'restart-etcd',
] as const
export type Fault = (typeof FAULTS)[number]

export interface CampaignOptions {
  rounds: number
  seed: number
  /** Seconds the workload runs with the fault in place. */
  faultSeconds?: number
  log?: (line: string) => void
}

export interface CampaignResult {
  seed: number
  rounds: number
  faults: Partial<Record<Fault, number>>
  /** Acknowledged records checked, summed over every replica they were read from. */
  recordsVerified: number
  acknowledged: number
  /** fio jobs (write then verify) that completed, and their files verified again on every replica. */
  fioJobs: number
  fioVerified: number
  lost: Array<{ volume: string; node: string; file: string; records: number[] }>
  scrubBad: number
  replicasDiffer: string[]
}

const NODES = ['node-a', 'node-b', 'node-c']
const RECORD = 4096
const VOLUMES = [{ name: 'c2', repl: 2 }, { name: 'c3', repl: 3 }]

interface VolumeState {
  name: string
  mountedOn: ClusterNode | undefined
  mountpoint: string | undefined
  writer: RecordWriter | undefined
  files: Map<string, Set<number>>
  /** The fio job of this round, and the files of the jobs that completed (fsync after every write, verified). */
  fio: Promise<CommandResult> | undefined
  fioFiles: string[]
}

/** fio writes with an fsync after every write and verifies what it wrote; the same job with --verify_only checks it again. */
const fioJob = (file: string) => [`--name=campaign`, `--filename=${file}`, '--rw=randwrite', '--bs=4k', '--size=2M', '--ioengine=psync',
  '--fsync=1', '--verify=crc32c', '--verify_fatal=1', '--randrepeat=1', '--verify_state_save=0']

export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const log = o.log ?? (() => undefined)
  const random = mulberry32(o.seed)
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!
  const faultMs = (o.faultSeconds ?? 6) * 1000
  const result: CampaignResult = { seed: o.seed, rounds: 0, faults: {}, recordsVerified: 0, acknowledged: 0, fioJobs: 0, fioVerified: 0, lost: [], scrubBad: 0, replicasDiffer: [] }
  log(`campaign seed ${o.seed}, ${o.rounds} rounds`)
  const cluster = await startCluster(NODES, { network: true, powerLoss: true })
  const api = (n: ClusterNode) => new ApiClient(n.apiUrl, cluster.apiToken)
  const alive = new Set(NODES)
  const volumes: VolumeState[] = VOLUMES.map((v) => ({ name: v.name, mountedOn: undefined, mountpoint: undefined, writer: undefined, files: new Map(), fio: undefined, fioFiles: [] }))
  try {
    for (const v of VOLUMES) await pluginOk(cluster.nodes[0]!, '/VolumeDriver.Create', { Name: v.name, Opts: { size: '64M', repl: String(v.repl) } })
    for (let round = 0; round < o.rounds; round++) {
      for (const v of volumes) await ensureMounted(v, pick(NODES.filter((n) => alive.has(n))))
      for (const v of volumes) startWriter(v, round)
      await Promise.all(volumes.map((v) => v.writer!.waitFor(10, 60_000)))
      const fault = pick(FAULTS)
      result.faults[fault] = (result.faults[fault] ?? 0) + 1
      const target = await inject(fault, volumes)
      log(`round ${round}: ${fault}${target ? ` on ${target}` : ''}`)
      await sleep(faultMs)
      await heal()
      for (const v of volumes) {
        if (v.writer?.error !== undefined || !v.mountedOn || !alive.has(v.mountedOn.nodeId)) await remount(v)
      }
      for (const v of volumes) await stopWriter(v)
      for (const v of volumes) await waitInSync(v)
      result.rounds++
    }
    for (const v of volumes) await verify(v)
    return result
  } finally {
    for (const v of volumes) await v.writer?.stop().catch(() => undefined)
    await cluster.stop()
    log(`campaign seed ${o.seed}: ${JSON.stringify({ ...result, lost: result.lost.length })}`)
  }

  function startWriter(v: VolumeState, round: number): void {
    const file = `records-${round}`
    const acked = new Set<number>()
    v.files.set(file, acked)
    // The repl=2 volume's records go in batches with direct I/O and one fsync, so replicas
    // hold acknowledged-to-be writes unflushed much of the time (what a power cut tests).
    v.writer = startRecordWriter(path.join(v.mountpoint!, file), { recordBytes: RECORD, intervalMs: 5, ...(v.name === 'c2' ? { batch: 16 } : {}) })
    const fioFile = `fio-${round}`
    v.fio = runFio(fioJob(path.join(v.mountpoint!, fioFile))).then((r) => {
      if (r.code === 0) v.fioFiles.push(fioFile)
      return r
    })
    const w = v.writer
    // Keep what it acknowledged even after it stops.
    const copy = setInterval(() => { for (const n of w.acked) acked.add(n) }, 100)
    void w.done.then(() => {
      clearInterval(copy)
      for (const n of w.acked) acked.add(n)
    })
  }

  async function stopWriter(v: VolumeState): Promise<void> {
    await v.fio
    v.fio = undefined
    await v.writer?.stop()
    await sleep(150)
    v.writer = undefined
  }

  async function inject(fault: Fault, vs: VolumeState[]): Promise<string | undefined> {
    const v = pick(vs)
    const coordinator = v.mountedOn!
    const info = await api(coordinator).inspectVolume(v.name)
    const replicas = info.replicas.map((r) => r.nodeId)
    const someone = pick(NODES)
    const net = cluster.network!
    switch (fault) {
      case 'kill-coordinator':
        await cluster.node(coordinator.nodeId).kill()
        alive.delete(coordinator.nodeId)
        return coordinator.nodeId
      case 'kill-replica': {
        const r = pick(replicas.filter((n) => n !== coordinator.nodeId).concat(replicas.length === 1 ? replicas : []))
        await cluster.node(r).kill()
        alive.delete(r)
        return r
      }
      case 'power-loss':
        await cluster.powerLoss(someone, Math.floor(random() * 2 ** 31))
        alive.delete(someone)
        return someone
      case 'cut-from-etcd':
        net.cut(someone, 'etcd')
        return someone
      case 'cut-from-peer': {
        const other = pick(NODES.filter((n) => n !== coordinator.nodeId))
        net.cut(coordinator.nodeId, other)
        return `${coordinator.nodeId} x ${other}`
      }
      case 'cut-one-way': {
        const other = pick(NODES.filter((n) => n !== coordinator.nodeId))
        net.cut(coordinator.nodeId, other, random() < 0.5 ? 'to' : 'from')
        return `${coordinator.nodeId} -> ${other}`
      }
      case 'isolate':
        net.isolate(someone)
        return someone
      case 'stall-disk':
        await cluster.node(someone).disk!.stall(faultMs + 4_000)
        return someone
      case 'fail-fsync':
        await cluster.node(someone).disk!.failFsyncs(1)
        return someone
      case 'restart-etcd':
        await cluster.etcd.kill()
        await sleep(3_000)
        await cluster.etcd.restart()
        return undefined
    }
  }

  async function heal(): Promise<void> {
    cluster.network!.heal()
    for (const n of NODES) {
      if (alive.has(n)) continue
      await cluster.start(n)
      alive.add(n)
    }
    // Every node online again, as the others see it.
    await waitFor('every node online', async () => (await api(cluster.node('node-a')).listNodes()).every((n) => n.online), 60_000, 500)
  }

  /** Mount where the volume is not fenced or dead: the old mount (if any) first let go. */
  async function remount(v: VolumeState): Promise<void> {
    if (v.mountedOn) {
      await pluginOk(v.mountedOn, '/VolumeDriver.Unmount', { Name: v.name, ID: 'campaign' }).catch(() => undefined)
      v.mountedOn = undefined
    }
    await ensureMounted(v, pick(NODES))
  }

  async function ensureMounted(v: VolumeState, on: string): Promise<void> {
    if (v.mountedOn) return
    const n = cluster.node(on)
    v.mountpoint = await waitFor(`${v.name} mounted on ${on}`, async () => (await pluginOk(n, '/VolumeDriver.Mount', { Name: v.name, ID: 'campaign' })).Mountpoint as string, 60_000, 1000)
    v.mountedOn = n
  }

  async function waitInSync(v: VolumeState): Promise<VolumeInfo> {
    return waitFor(`${v.name} in sync`, async () => {
      const info = await api(v.mountedOn!).inspectVolume(v.name)
      return info.replicas.every((r) => r.inSync) && info.replicas.length === VOLUMES.find((x) => x.name === v.name)!.repl ? info : undefined
    }, 120_000, 500)
  }

  async function verify(v: VolumeState): Promise<void> {
    const info = await waitInSync(v)
    await pluginOk(v.mountedOn!, '/VolumeDriver.Unmount', { Name: v.name, ID: 'campaign' })
    v.mountedOn = undefined
    for (const acked of v.files.values()) result.acknowledged += acked.size
    result.fioJobs += v.fioFiles.length
    for (const r of info.replicas) {
      const n = cluster.node(r.nodeId)
      const mp = (await pluginOk(n, '/VolumeDriver.Mount', { Name: v.name, ID: 'verify' })).Mountpoint as string
      for (const [file, acked] of v.files) {
        const check = checkRecords(path.join(mp, file), RECORD, acked)
        result.recordsVerified += check.checked
        if (check.lost.length > 0) result.lost.push({ volume: v.name, node: n.nodeId, file, records: check.lost })
      }
      for (const file of v.fioFiles) {
        const again = await runFio([...fioJob(path.join(mp, file)), '--verify_only'])
        if (again.code === 0) result.fioVerified++
        else result.lost.push({ volume: v.name, node: n.nodeId, file: `${file} (fio --verify_only: ${again.out.slice(-300)})`, records: [] })
      }
      await pluginOk(n, '/VolumeDriver.Unmount', { Name: v.name, ID: 'verify' })
    }
    const scrub = await api(cluster.node(info.replicas[0]!.nodeId)).scrub(v.name)
    result.scrubBad += scrub.badBlocks + scrub.unrecoverableBlocks
    const digests = await Promise.all(info.replicas.map((r) => replicaDigest(cluster.node(r.nodeId), info.id)))
    if (new Set(digests).size !== 1) result.replicasDiffer.push(v.name)
  }
}

/** A seed from the clock and randomness, for runs that do not name one. */
export function newSeed(): number {
  return randomBytes(4).readUInt32BE(0) & 0x7fffffff
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
