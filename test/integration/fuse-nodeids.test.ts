/**
 * The addon's FUSE server (its file table: native/fuse_directory.cc) and files that go and come back under
 * the same name: the next attach of a volume on a node adds its device file again. A
 * loop device of the earlier attach, fenced and lazily detached, may still hold the old
 * file open; it must never reach the new one (two ext4 instances on one volume). Every
 * added file gets a nodeid never used before, and requests on a removed one fail.
 *
 * This process serves the mount: whatever touches it runs in a child process, started
 * asynchronously.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import pino from 'pino'
import { AddonFuseDevices } from '../../src/frontend/addon-fuse-devices'
import type { BlockDevice } from '../../src/frontend/device-directory'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { leftoversUnder, makeTempDir, removeDir } from '../helpers/daemon'
import { runCommand } from '../helpers/run'

assertIntegrationPreconditions()

const MiB = 1024 * 1024
const dir = makeTempDir('pxd-fuse-ids-')
const log = pino({ level: 'silent' })

/** A volume in memory that counts what reaches it. */
class MemoryDevice implements BlockDevice {
  readonly size: number
  readonly bytes: Buffer
  reads = 0
  writes = 0
  flushes = 0

  constructor(size: number) {
    this.size = size
    this.bytes = Buffer.alloc(size)
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.reads++
    into.set(this.bytes.subarray(offset, offset + into.length))
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.writes++
    this.bytes.set(data, offset)
  }

  async flush(): Promise<void> {
    this.flushes++
  }
}

const sh = (script: string, ...args: string[]) => runCommand('sh', ['-c', script, 'sh', ...args], 60_000)

/**
 * A process holding `file` open on fd 3, as a loop device holds its backing file; it
 * writes one block through that fd when told to, and reports how the write went.
 */
function holder(file: string): { opened: Promise<void>; write: () => Promise<string> } {
  const script = 'exec 4>&1; exec 3<>"$1" || exit 9; echo opened; read go; dd if=/dev/zero bs=4096 count=1 conv=notrunc status=none 1>&3 2>&4; echo "rc=$?"'
  const child = spawn('sh', ['-c', script, 'sh', file], { stdio: ['pipe', 'pipe', 'pipe'] })
  let out = ''
  const exited = new Promise<string>((resolve) => child.once('exit', () => resolve(out)))
  const opened = new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d
      if (out.includes('opened\n')) resolve()
    })
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { out += d })
    void exited.then(() => reject(new Error(`the holder exited before opening ${file}: ${out}`)))
  })
  return {
    opened,
    write: () => {
      child.stdin!.end('go\n')
      return exited
    },
  }
}

let devices: AddonFuseDevices | undefined

test.before(async () => {
  devices = new AddonFuseDevices(path.join(dir, 'dev'), log)
  await devices.mount()
})

test.after.always(async () => {
  await devices?.unmount(true).catch(() => undefined)
  const left = leftoversUnder(dir)
  removeDir(dir)
  if (left.length > 0) throw new Error(`left behind: ${left.join(', ')}`)
})

test.serial('an open file of a removed name never reaches the file added under that name next', async (t) => {
  const d = devices!
  const first = new MemoryDevice(4 * MiB)
  d.add('vol', first)
  const old = holder(d.pathOf('vol'))
  await old.opened

  d.remove('vol')
  const second = new MemoryDevice(4 * MiB)
  d.add('vol', second)
  const out = await old.write()
  t.regex(out, /Input\/output error|Stale file handle/, out)
  t.notRegex(out, /rc=0/, out)
  t.is(second.writes + second.reads + second.flushes, 0, 'the new file saw no request from the old open file')
  t.is(first.writes, 0, 'nor did the removed one')

  // An open by name right away (the kernel still caches the old entry) reaches the new file.
  const fresh = await sh('dd if=/dev/urandom of="$1" bs=4096 count=1 conv=notrunc status=none', d.pathOf('vol'))
  t.is(fresh.code, 0, fresh.out)
  t.is(second.writes, 1)
  const stat = await sh('stat -c %s "$1"', d.pathOf('vol'))
  t.is(stat.out.trim(), String(4 * MiB))
  d.remove('vol')
})

test.serial('files added and removed many times, with the kernel forgetting their inodes, keep working', async (t) => {
  const d = devices!
  for (let i = 0; i < 20; i++) {
    const dev = new MemoryDevice(MiB + i * 4096)
    d.add('cycle', dev)
    const r = await sh('dd if=/dev/urandom of="$1" bs=4096 count=2 conv=notrunc status=none && stat -c %s "$1"', d.pathOf('cycle'))
    t.is(r.code, 0, r.out)
    t.is(r.out.trim(), String(dev.size), `cycle ${i}: the size of this file, not of an earlier one`)
    t.is(dev.writes, 2)
    d.remove('cycle')
    // The kernel drops unused inodes and FORGETs their nodeids.
    if (i % 5 === 0) await sh('echo 2 > /proc/sys/vm/drop_caches')
  }
  t.regex((await sh('cat "$1"', d.pathOf('cycle'))).out, /No such file/)
  t.is((await sh('ls "$1"', d.mountpoint)).out.trim(), '')
})

test.serial('the reader thread is an I/O flusher (PR_SET_IO_FLUSHER) when the process may make it one', (t) => {
  const PF_MEMALLOC_NOIO = 0x00080000
  const CAP_SYS_RESOURCE = 24n
  const threads = readdirSync('/proc/self/task').filter((tid) => readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === 'pxd-fuse')
  t.is(threads.length, 1, 'one reader thread, named pxd-fuse')
  const stat = readFileSync(`/proc/self/task/${threads[0]}/stat`, 'utf8')
  const flags = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[6])
  const capEff = BigInt(`0x${/CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`)
  const allowed = ((capEff >> CAP_SYS_RESOURCE) & 1n) === 1n
  // Without CAP_SYS_RESOURCE (some containers) the prctl fails and the thread serves as before.
  if (!allowed) t.log('this process lacks CAP_SYS_RESOURCE: the reader thread cannot be an I/O flusher here')
  t.is((flags & PF_MEMALLOC_NOIO) !== 0, allowed, `thread flags ${flags.toString(16)}`)
})
