/**
 * Crash safety: the coordinator of a repl=2 volume is killed with SIGKILL again and again
 * in the middle of an fio workload. After each restart the replicas are reconciled, every
 * file fio had fsynced verifies, and a scrub finds nothing it cannot repair.
 */
import test from 'ava'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { runFio } from '../helpers/run'

assertIntegrationPreconditions()

const ITERATIONS = 4
const FILE_BYTES = 4 * 1024 * 1024
let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
})

test.after.always(async () => {
  await cluster?.stop()
})

const job = (file: string) => ['--name=job', `--filename=${file}`, '--rw=write', '--bs=64k', `--size=${FILE_BYTES}`, '--ioengine=psync', '--verify=crc32c', '--verify_state_save=0']

async function mount(n: ClusterNode, id: string): Promise<string> {
  return waitFor(`a mount on ${n.nodeId}`, async () => {
    const r = await pluginCall(n.pluginSocket, '/VolumeDriver.Mount', { Name: 'crashy', ID: id })
    return r.body.Err === '' ? (r.body.Mountpoint as string) : undefined
  }, 30_000, 250)
}

test(`kill -9 of the coordinator ${ITERATIONS} times during fio: nothing fsynced is lost`, async (t) => {
  const a = cluster.node('node-a')
  t.is((await pluginCall(a.pluginSocket, '/VolumeDriver.Create', { Name: 'crashy', Opts: { size: '256M', repl: '2' } })).body.Err, '')
  const synced: string[] = []
  let verifiedBytes = 0
  const scrubs: string[] = []
  for (let i = 0; i < ITERATIONS; i++) {
    let coordinator = cluster.node('node-a')
    let mp = await mount(coordinator, `w${i}`)
    let stop = false
    const before = synced.length
    const writer = (async () => {
      for (let k = 0; !stop && k < 100; k++) {
        const name = `i${i}-f${k}`
        const r = await runFio([...job(path.join(mp, name)), '--do_verify=0', '--end_fsync=1'])
        if (r.code !== 0) break
        synced.push(name)
      }
    })()
    await waitFor('fio to fsync a file', async () => synced.length > before, 60_000, 20)
    await new Promise((r) => setTimeout(r, 150 + 250 * i))
    await coordinator.kill()
    stop = true
    await writer

    coordinator = await cluster.start('node-a')
    mp = await mount(coordinator, `v${i}`)
    for (const name of synced) {
      const r = await runFio([...job(path.join(mp, name)), '--verify_only'])
      t.is(r.code, 0, `iteration ${i}: fio verify of ${name}: ${r.out.slice(-300)}`)
      verifiedBytes += FILE_BYTES
    }
    t.is((await pluginCall(coordinator.pluginSocket, '/VolumeDriver.Unmount', { Name: 'crashy', ID: `v${i}` })).body.Err, '')
    const scrub = await new ApiClient(coordinator.apiUrl).scrub('crashy')
    t.is(scrub.unrecoverableBlocks, 0, `iteration ${i}: scrub ${JSON.stringify(scrub)}`)
    scrubs.push(`${scrub.checkedBlocks} checked/${scrub.badBlocks} bad/${scrub.repairedBlocks} repaired`)
  }
  t.log(`${ITERATIONS} kills, ${synced.length} fsynced files, ${verifiedBytes} bytes verified by fio, nothing lost; scrubs: ${scrubs.join('; ')}`)
  t.true(/replicas reconciled after an unclean detach/.test(cluster.node('node-a').logs()))
})
