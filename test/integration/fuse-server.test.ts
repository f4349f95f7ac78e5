/**
 * The addon's own FUSE server (native/fuse_server.cc) through its JS adapter, against a
 * real kernel: a real mount, a real loop device with direct I/O, dd and coreutils in
 * child processes. The volume behind the device file is a buffer in this process, so the
 * test sees every request the kernel sends.
 *
 * This process serves the mount: everything that touches it runs in a child process,
 * started asynchronously (a synchronous spawn would block the thread that must answer).
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import pino from 'pino'
import { pxdError } from '../../src/errors'
import { AddonFuseDevices } from '../../src/frontend/addon-fuse-devices'
import type { BlockDevice } from '../../src/frontend/device-directory'
import { attachLoop, detachLoop } from '../../src/frontend/loop'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { leftoversUnder, makeTempDir, removeDir } from '../helpers/daemon'
import { runCommand } from '../helpers/run'

assertIntegrationPreconditions()

const MiB = 1024 * 1024
const dir = makeTempDir('pxd-fuse-')
const log = pino({ level: 'silent' })

/** A volume in memory that records what reaches it. */
class MemoryDevice implements BlockDevice {
  readonly size: number
  readonly bytes: Buffer
  inFlight = 0
  maxInFlight = 0
  largest = 0
  writes = 0
  flushes = 0
  fail: unknown

  constructor(size: number) {
    this.size = size
    this.bytes = Buffer.alloc(size)
  }

  async #op<T>(length: number, fn: () => T): Promise<T> {
    this.inFlight++
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight)
    this.largest = Math.max(this.largest, length)
    // Answer a little later, as a disk would: requests the kernel sends meanwhile pile up.
    await new Promise((resolve) => setTimeout(resolve, 1))
    this.inFlight--
    if (this.fail) throw this.fail
    return fn()
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.#op(into.length, () => { into.set(this.bytes.subarray(offset, offset + into.length)) })
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    this.writes++
    return this.#op(data.length, () => { this.bytes.set(data, offset) })
  }

  flush(): Promise<void> {
    this.flushes++
    return this.#op(0, () => undefined)
  }
}

/** A shell command in a child process, started asynchronously (see above). */
const sh = (script: string) => runCommand('sh', ['-c', script], 60_000)

let devices: AddonFuseDevices | undefined
const loops: string[] = []

test.before(async () => {
  devices = new AddonFuseDevices(path.join(dir, 'dev'), log)
  await devices.mount()
})

test.after.always(async () => {
  for (const loop of loops.splice(0)) await detachLoop(loop).catch(() => undefined)
  await devices?.unmount(true).catch(() => undefined)
  const left = leftoversUnder(dir)
  removeDir(dir)
  if (left.length > 0) throw new Error(`left behind: ${left.join(', ')}`)
})

test.serial('the directory lists and stats its files and refuses to create, remove or resize them', async (t) => {
  const d = devices!
  d.add('vol-a', new MemoryDevice(8 * MiB))
  t.teardown(() => d.remove('vol-a'))
  const mp = d.mountpoint
  t.is((await sh(`ls ${mp}`)).out.trim(), 'vol-a')
  t.is((await sh(`stat -c '%s %F %a' ${mp}/vol-a`)).out.trim(), `${8 * MiB} regular file 600`)
  t.regex((await sh(`touch ${mp}/new`)).out, /Operation not permitted|Permission denied/)
  t.regex((await sh(`rm -f ${mp}/vol-a`)).out, /Operation not permitted/)
  t.regex((await sh(`truncate -s 1M ${mp}/vol-a`)).out, /Operation not permitted/)
  t.is((await sh(`truncate -s ${8 * MiB} ${mp}/vol-a`)).code, 0, 'a no-op truncate is fine')
  t.regex((await sh(`cat ${mp}/missing`)).out, /No such file/)
  t.not((await sh(`dd if=/dev/zero of=${mp}/vol-a bs=4k count=1 seek=${2048} conv=notrunc oflag=direct`)).code, 0, 'a write past the end fails')
  d.remove('vol-a')
  t.is((await sh(`ls ${mp}`)).out.trim(), '', 'a removed file is gone from the listing')
})

test.serial('a loop device with direct I/O gets large requests, several at once, and the bytes round-trip', async (t) => {
  const d = devices!
  const dev = new MemoryDevice(64 * MiB)
  d.add('vol-b', dev)
  t.teardown(() => d.remove('vol-b'))
  const loop = await attachLoop(d.pathOf('vol-b'))
  loops.push(loop)
  t.is(readFileSync(`/sys/block/${path.basename(loop)}/loop/dio`, 'utf8').trim(), '1', 'the loop device uses direct I/O on the FUSE file')

  const src = path.join(dir, 'src')
  const back = path.join(dir, 'back')
  const payload = randomBytes(32 * MiB)
  writeFileSync(src, payload)
  const w = await sh(`dd if=${src} of=${loop} bs=4M oflag=direct conv=fsync status=none`)
  t.is(w.code, 0, w.out)
  t.true(dev.bytes.subarray(0, payload.length).equals(payload), 'the device holds exactly what was written through the loop')
  t.true(dev.maxInFlight > 1, `requests overlap (at most ${dev.maxInFlight} in flight)`)
  t.true(dev.largest > 128 * 1024 && dev.largest <= MiB, `requests are larger than libfuse 2's 128 KiB and at most 1 MiB (largest ${dev.largest})`)
  t.true(dev.flushes >= 1, 'conv=fsync reaches the device as a flush')

  const r = await sh(`dd if=${loop} of=${back} bs=4M count=8 iflag=direct status=none`)
  t.is(r.code, 0, r.out)
  t.true(readFileSync(back).equals(payload), 'reading through the loop returns the same bytes')

  dev.fail = new Error('disk on fire')
  const failed = await sh(`dd if=${loop} of=/dev/null bs=1M count=1 iflag=direct status=none`)
  t.not(failed.code, 0, 'a failing device fails the read')
  t.regex(failed.out, /Input\/output error/)
  dev.fail = pxdError('INVALID_ARGUMENT', 'the engine refused the range')
  const refused = await sh(`dd if=${loop} of=/dev/null bs=1M count=1 iflag=direct status=none`)
  t.regex(refused.out, /Invalid argument/, 'a refused range is EINVAL, not EIO')
  dev.fail = undefined

  await detachLoop(loop)
  loops.splice(loops.indexOf(loop), 1)
})

test.serial('unmounting is refused while a loop device holds a file, and works once it is detached', async (t) => {
  const d = devices!
  d.add('vol-c', new MemoryDevice(4 * MiB))
  const loop = await attachLoop(d.pathOf('vol-c'))
  loops.push(loop)
  const err = await t.throwsAsync(() => d.unmount())
  t.regex(err!.message, /busy/i)
  t.is((await sh(`ls ${d.mountpoint}`)).out.trim(), 'vol-c', 'still serving after the refused unmount')
  await detachLoop(loop)
  loops.splice(loops.indexOf(loop), 1)
  d.remove('vol-c')
  await d.unmount()
  t.false(readFileSync('/proc/self/mounts', 'utf8').includes(` ${d.mountpoint} `), 'the device directory is unmounted')
  // Mounted again for nothing else to fail: the after hook unmounts it.
  await d.mount()
})
