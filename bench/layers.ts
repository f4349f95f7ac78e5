/**
 * `npm run bench:layers`: where the latency of a 4 KiB write + fsync accumulates, layer by
 * layer, in one run. The same fio job (4 KiB random writes, an fsync after each, one at a
 * time) against:
 *
 *   host, direct I/O           a file on the disk under pxd's data dir (the bench's baseline)
 *   host, page cache           the same without direct I/O: what flushing a page-cached
 *                              file costs, as pxd's replica files are written
 *   device file, repl=N        pxd's FUSE device file of a mounted volume, written directly:
 *                              one FUSE write and one FUSE flush per pair, no loop, no ext4
 *   volume, repl=N             a file in the volume's ext4 (loop device on the device file),
 *                              as the bench measures it
 *
 * The device-file job writes a region in the middle of the volume that its fresh ext4 does
 * not use (no metadata there with flex_bg, no data written yet); the volume is made for this
 * run and removed after it. A benchmark: it prints and asserts nothing.
 */
import { readdirSync, rmSync } from 'node:fs'
import path from 'node:path'
import { parseSize } from '../src/util/size'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../test/helpers/cluster'
import { pluginCall } from '../test/helpers/plugin-client'
import { runWorkload, syncAll, WORKLOADS, type SyncLatency } from './fio'

const VOLUME_SPEC = '1G'
const REGION = parseSize('64M')
const RAW_OFFSET = parseSize('512M') + parseSize('1M')

interface Layer { label: string; file: string; offset?: number; buffered?: boolean }

async function plugin(node: ClusterNode, endpoint: string, body: unknown): Promise<Record<string, unknown>> {
  const r = await pluginCall(node.pluginSocket, endpoint, body)
  if (r.body.Err) throw new Error(`${endpoint}: ${String(r.body.Err)}`)
  return r.body
}

async function main(runtime: number): Promise<void> {
  const syncWrite = WORKLOADS.find((w) => w.id === 'syncWrite')!
  let cluster: Cluster | undefined
  const mounted: Array<[ClusterNode, string]> = []
  const created: Array<[ClusterNode, string]> = []
  try {
    cluster = await startCluster(['node-a', 'node-b'])
    const a = cluster.node('node-a')
    await waitFor('both nodes online', async () => {
      const r = await pluginCall(a.pluginSocket, '/VolumeDriver.List', {})
      return r.status === 200 || undefined
    })
    await new Promise((resolve) => setTimeout(resolve, 4000)) // node-b's lease and capacity
    const layers: Layer[] = [
      { label: 'host, direct I/O', file: path.join(a.dataDir, 'layers.fio') },
      { label: 'host, page cache', file: path.join(a.dataDir, 'layers-buffered.fio'), buffered: true },
    ]
    for (const repl of [1, 2]) {
      const name = `layers-r${repl}`
      await plugin(a, '/VolumeDriver.Create', { Name: name, Opts: { size: VOLUME_SPEC, repl: String(repl) } })
      created.push([a, name])
      const devDir = path.join(a.runDir, 'dev')
      const before = new Set(readdirSync(devDir))
      const mountpoint = (await plugin(a, '/VolumeDriver.Mount', { Name: name, ID: 'layers' })).Mountpoint as string
      mounted.push([a, name])
      const device = readdirSync(devDir).find((f) => !before.has(f))
      if (!device) throw new Error(`no device file appeared for ${name}`)
      layers.push({ label: `device file, repl=${repl}`, file: path.join(devDir, device), offset: RAW_OFFSET })
      layers.push({ label: `volume, repl=${repl}`, file: path.join(mountpoint, 'layers.fio') })
    }
    process.stdout.write(`4 KiB random write + fsync, one at a time, ${runtime} s per row, on a ${REGION / 2 ** 20} MiB region\n\n`)
    process.stdout.write('| layer | pairs/s | write p50, ms | write p99 | fsync p50 | fsync p99 | pair p50 | pair p99 |\n')
    process.stdout.write('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n')
    for (const layer of layers) {
      await syncAll()
      const r = await runWorkload(syncWrite, {
        file: layer.file, fileSize: REGION, runtime, ramp: 1, timeoutSeconds: runtime + 120,
        ...(layer.offset !== undefined ? { offset: layer.offset } : {}),
        ...(layer.buffered ? { buffered: true } : {}),
      })
      const l = r.latency as SyncLatency
      const ms = (us: number) => (us / 1000).toFixed(2)
      process.stdout.write(`| ${layer.label} | ${r.value.toFixed(0)} | ${ms(l.write.p50)} | ${ms(l.write.p99)} | ${ms(l.fsync.p50)} | ${ms(l.fsync.p99)} | ${ms(l.p50)} | ${ms(l.p99)} |\n`)
    }
  } finally {
    for (const [node, name] of mounted.reverse()) await plugin(node, '/VolumeDriver.Unmount', { Name: name, ID: 'layers' }).catch(() => undefined)
    for (const [node, name] of created.reverse()) await plugin(node, '/VolumeDriver.Remove', { Name: name }).catch(() => undefined)
    for (const n of cluster?.nodes ?? []) for (const f of ['layers.fio', 'layers-buffered.fio']) rmSync(path.join(n.dataDir, f), { force: true })
    await cluster?.stop()
  }
}

const i = process.argv.indexOf('--runtime')
const runtime = i > 0 ? Number(process.argv[i + 1]) : 5
if (!(runtime > 0)) {
  process.stderr.write('usage: npm run bench:layers -- [--runtime SECONDS]\n')
  process.exit(2)
}
main(runtime).then(() => process.exit(0), (err) => {
  process.stderr.write(`bench:layers: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
