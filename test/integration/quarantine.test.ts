/**
 * A node never deletes a replica because the metadata store does not list it: a lost
 * embedded store, a wrong --cluster-id or a restored etcd would otherwise wipe the node.
 * Such replicas are set aside in quarantine, listed and purged by pxctl.
 */
import test from 'ava'
import { existsSync, promises as fs, readdirSync } from 'node:fs'
import path from 'node:path'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { PXCTL_BIN } from '../helpers/paths'
import { runCommand } from '../helpers/run'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon | undefined

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

test('with the embedded metadata file gone, the next start quarantines the replica instead of deleting it', async (t) => {
  daemon = await startDaemon({ dir })
  const created = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'keep', Opts: { size: '32M' } })
  t.is(created.body.Err, '', created.raw)
  const m = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'keep', ID: 'q1' })
  t.is(m.body.Err, '', m.raw)
  await fs.writeFile(path.join(m.body.Mountpoint as string, 'precious'), 'data')
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'keep', ID: 'q1' })).body.Err, '')
  const [volumeId] = readdirSync(path.join(daemon.dataDir, 'replicas'))
  t.regex(volumeId ?? '', /^[0-9a-f]{16}$/)
  await daemon.stop()

  await fs.rm(path.join(dir, 'data', 'kvdb.json'))
  daemon = await startDaemon({ dir })
  t.false(existsSync(path.join(daemon.dataDir, 'replicas', volumeId!)), 'no longer served as a replica')
  const pxctl = (...args: string[]) => runCommand(process.execPath, [PXCTL_BIN, '--api', daemon!.apiUrl, ...args], 60_000)
  const listed = await pxctl('--json', 'quarantine', 'list')
  t.is(listed.code, 0, listed.stderr)
  const list = JSON.parse(listed.stdout) as Array<{ name: string; volumeId: string; bytes: number }>
  t.is(list.length, 1)
  t.is(list[0]!.volumeId, volumeId!)
  t.true(list[0]!.bytes > 0)
  const kept = path.join(daemon.dataDir, 'quarantine', list[0]!.name)
  t.true(existsSync(path.join(kept, 'data')) && existsSync(path.join(kept, 'crc')) && existsSync(path.join(kept, 'super.json')), 'the files are all there')
  t.regex(daemon.logs(), /replica moved to quarantine/)
  const human = await pxctl('quarantine', 'list')
  t.regex(human.stdout, new RegExp(`^${list[0]!.name}\\s+${volumeId!}\\s+`, 'm'))

  const bad = await pxctl('quarantine', 'purge', '../replicas')
  t.is(bad.code, 1)
  t.regex(bad.stderr, /not the name of a quarantined replica/)
  const missing = await pxctl('quarantine', 'purge', `${volumeId}.2020-01-01T00-00-00-000Z`)
  t.regex(missing.stderr, /no quarantined replica/)
  t.true(existsSync(kept), 'bad input changed nothing')

  const purged = await pxctl('quarantine', 'purge', list[0]!.name)
  t.is(purged.code, 0, purged.stderr)
  t.false(existsSync(kept))
  t.deepEqual(JSON.parse((await pxctl('--json', 'quarantine', 'list')).stdout), [])
})
