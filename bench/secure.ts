/**
 * `npm run bench:secure` (`scripts/bench.sh secure`): what encryption at rest costs. The
 * same fio jobs (1 MiB sequential write, 4 KiB random write QD16, direct I/O) against a
 * file on the host disk, a plain repl=2 volume and a secure repl=2 volume
 * (use_cluster_secret=true, AES-256-XTS on the coordinator), in one run, rows interleaved
 * per round. Prints each figure, its ratio to the host disk, and secure / plain (goal
 * >= 0.8). A benchmark: it prints and asserts nothing.
 */
import { rmSync } from 'node:fs'
import path from 'node:path'
import { parseSize } from '../src/util/size'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../test/helpers/cluster'
import { pluginCall } from '../test/helpers/plugin-client'
import { runWorkload, syncAll, WORKLOADS } from './fio'

const VOLUME_SIZE = '2G'
const FILE_SIZE = parseSize('512M')

async function plugin(node: ClusterNode, endpoint: string, body: unknown): Promise<Record<string, unknown>> {
  const r = await pluginCall(node.pluginSocket, endpoint, body)
  if (r.body.Err) throw new Error(`${endpoint}: ${String(r.body.Err)}`)
  return r.body
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

async function main(runtime: number, rounds: number): Promise<void> {
  const jobs = WORKLOADS.filter((w) => w.id === 'seqWrite' || w.id === 'randWrite')
  let cluster: Cluster | undefined
  const volumes: string[] = []
  const mounted: string[] = []
  const files: string[] = []
  try {
    cluster = await startCluster(['node-a', 'node-b'])
    const a = cluster.node('node-a')
    await waitFor('both nodes online', async () => (await pluginCall(a.pluginSocket, '/VolumeDriver.List', {})).status === 200 || undefined)
    await new Promise((resolve) => setTimeout(resolve, 4000)) // node-b's lease and capacity
    const targets: Array<{ label: string; file: string }> = [{ label: 'host', file: path.join(a.dataDir, 'secure-bench.fio') }]
    for (const [name, opts] of [['bench-plain', {}], ['bench-secure', { secure: 'true', use_cluster_secret: 'true' }]] as const) {
      await plugin(a, '/VolumeDriver.Create', { Name: name, Opts: { size: VOLUME_SIZE, repl: '2', ...opts } })
      volumes.push(name)
      const mp = (await plugin(a, '/VolumeDriver.Mount', { Name: name, ID: 'bench' })).Mountpoint as string
      mounted.push(name)
      targets.push({ label: name === 'bench-plain' ? 'repl=2 plain' : 'repl=2 secure', file: path.join(mp, 'secure-bench.fio') })
    }
    files.push(...targets.map((t) => t.file))
    const values = new Map<string, number[]>()
    for (let round = 0; round < rounds; round++) {
      for (const w of jobs) {
        for (const t of targets) {
          await syncAll()
          const r = await runWorkload(w, { file: t.file, fileSize: FILE_SIZE, runtime, ramp: 2, timeoutSeconds: runtime + 300 })
          const key = `${w.id}/${t.label}`
          values.set(key, [...(values.get(key) ?? []), r.value])
        }
      }
    }
    process.stdout.write(`fio, direct I/O, ${runtime} s per row, median of ${rounds} round(s), ${FILE_SIZE / 2 ** 20} MiB file\n\n`)
    process.stdout.write('| job | host | repl=2 plain | repl=2 secure | plain / host | secure / host | secure / plain |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n')
    for (const w of jobs) {
      const [host, plain, secure] = targets.map((t) => median(values.get(`${w.id}/${t.label}`)!))
      const unit = w.id === 'seqWrite' ? ' MB/s' : ' IOPS'
      process.stdout.write(`| ${w.label} | ${host!.toFixed(0)}${unit} | ${plain!.toFixed(0)} | ${secure!.toFixed(0)} | ${(plain! / host!).toFixed(2)} | ${(secure! / host!).toFixed(2)} | ${(secure! / plain!).toFixed(2)} |\n`)
    }
  } finally {
    for (const f of files) rmSync(f, { force: true })
    const a = cluster?.node('node-a')
    if (a) {
      for (const name of mounted.reverse()) await plugin(a, '/VolumeDriver.Unmount', { Name: name, ID: 'bench' }).catch(() => undefined)
      for (const name of volumes.reverse()) await plugin(a, '/VolumeDriver.Remove', { Name: name }).catch(() => undefined)
    }
    await cluster?.stop()
  }
}

const arg = (flag: string, dflt: number) => {
  const i = process.argv.indexOf(flag)
  return i > 0 ? Number(process.argv[i + 1]) : dflt
}
const runtime = arg('--runtime', 10)
const rounds = arg('--rounds', 1)
if (!(runtime > 0) || !(rounds >= 1)) {
  process.stderr.write('usage: npm run bench:secure -- [--runtime SECONDS] [--rounds N]\n')
  process.exit(2)
}
main(runtime, rounds).then(() => process.exit(0), (err) => {
  process.stderr.write(`bench:secure: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
