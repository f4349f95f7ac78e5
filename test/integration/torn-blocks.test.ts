/**
 * A block being written when the daemon dies must read back as its old or its new
 * contents, never as a checksum error: the store writes a block's data and its crc with
 * two system calls, and a write-intent map (native/block_store.h) lets the next open
 * rebuild the crc of every block a crash left torn. Without it a lone replica answered
 * EIO for ever, and a torn ext4 journal block made the volume unmountable.
 *
 * Each round: fio runs 4 KiB random direct writes on an ext4 volume with one replica, the
 * daemon is killed with SIGKILL in the middle, then restarted; the volume must mount,
 * every file must read back and a scrub must find no bad block. The window between the
 * two writes is narrow, so there are several rounds.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { native } from '../../src/native/binding'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { PXCTL_BIN } from '../helpers/paths'
import { pluginOk } from '../helpers/volume-io'
import { runCommand, runFio } from '../helpers/run'

assertIntegrationPreconditions()

// Each round takes about 3 s. Before the intent map about one round in seven tore a block.
const ROUNDS = Number(process.env.PXD_TORN_ROUNDS ?? 30)
const BLOCK = 4096
const REGION = 1024 * 1024
const INTENT_HEADER = 16
const VOLUME = 'torn'
const dir = makeTempDir('pxd-torn-')
let daemon: Daemon | undefined

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

const fioJob = (mountpoint: string, extra: string[]) => [
  '--name=torn', `--directory=${mountpoint}`, '--size=12M', '--numjobs=2', '--bs=4k', '--rw=randwrite',
  '--direct=1', '--ioengine=libaio', '--iodepth=16', '--group_reporting', ...extra,
]

/** fio in the background until it is killed; its exit is awaited by the caller. */
function startFio(mountpoint: string): { child: ChildProcess; exited: Promise<void> } {
  const child = spawn('fio', fioJob(mountpoint, ['--time_based', '--runtime=60']), { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  return { child, exited }
}

async function mount(d: Daemon, id: string): Promise<string> {
  return (await pluginOk(d, '/VolumeDriver.Mount', { Name: VOLUME, ID: id })).Mountpoint as string
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * What the crash left in the replica (the daemon is dead, its page cache is not): the
 * blocks whose data does not match their crc. Each must lie in a region the intent map
 * has marked, or the next open could not repair it.
 */
function tornBlocks(t: ExecutionContext, d: Daemon, round: number): number {
  const replicas = path.join(d.dataDir, 'replicas')
  const [id] = readdirSync(replicas)
  const dir = path.join(replicas, id!)
  const data = readFileSync(path.join(dir, 'data'))
  const crcs = readFileSync(path.join(dir, 'crc'))
  const intent = readFileSync(path.join(dir, 'intent'))
  const zeros = Buffer.alloc(BLOCK)
  let torn = 0
  for (let b = 0; b < crcs.length / 4; b++) {
    const stored = crcs.readUInt32LE(b * 4)
    const block = data.subarray(b * BLOCK, (b + 1) * BLOCK)
    if (stored === 0 ? block.equals(zeros) : native.crc32c(block) === stored) continue
    torn++
    const region = Math.floor((b * BLOCK) / REGION)
    t.true(intent[INTENT_HEADER + region] !== 0, `round ${round}: torn block ${b} lies in region ${region}, which is not marked`)
  }
  return torn
}

test('kill -9 during random 4 KiB direct writes never leaves a block that reads as EIO', async (t) => {
  daemon = await startDaemon({ dir })
  await pluginOk(daemon, '/VolumeDriver.Create', { Name: VOLUME, Opts: { size: '64M', repl: '1' } })
  let mp = await mount(daemon, 'r0')
  // Lay the files out once, synced: the rounds only overwrite them.
  const layout = await runFio(fioJob(mp, ['--runtime=1', '--end_fsync=1']))
  t.is(layout.code, 0, layout.out)

  let torn = 0
  for (let round = 1; round <= ROUNDS; round++) {
    const fio = startFio(mp)
    await sleep(400 + Math.floor(Math.random() * 900))
    await daemon.kill()
    fio.child.kill('SIGKILL')
    await fio.exited
    const tornNow = tornBlocks(t, daemon, round)
    if (tornNow > 0) t.log(`round ${round}: ${tornNow} torn blocks`)
    torn += tornNow

    daemon = await startDaemon({ dir })
    // Mounting replays the ext4 journal, whose blocks were being written too.
    mp = await mount(daemon, `r${round}`)
    const read = await runCommand('sh', ['-c', 'find "$1" -type f -exec cat {} + > /dev/null', 'sh', mp], 60_000)
    t.is(read.code, 0, `round ${round}: reading every file back: ${read.out}`)
    const scrub = await runCommand(process.execPath, [PXCTL_BIN, '--api', daemon.apiUrl, '--json', 'volume', 'scrub', VOLUME], 60_000)
    const result = JSON.parse(scrub.stdout || '{}') as { checkedBlocks?: number; badBlocks?: number; unrecoverableBlocks?: number }
    t.is(result.unrecoverableBlocks, 0, `round ${round}: scrub: ${scrub.out}`)
    t.is(result.badBlocks, 0, `round ${round}: scrub: ${scrub.out}`)
    t.true((result.checkedBlocks ?? 0) > 0, `round ${round}: scrub checked nothing: ${scrub.out}`)
  }
  t.log(`${torn} torn blocks in ${ROUNDS} crashes, all repaired`)
  await pluginOk(daemon, '/VolumeDriver.Unmount', { Name: VOLUME, ID: `r${ROUNDS}` })
  await daemon.stop()
  daemon = undefined
})
