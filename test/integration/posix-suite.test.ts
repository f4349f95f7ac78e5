/**
 * The POSIX behaviour suite (test/faults/posix-suite.ts) and the cross-node concurrency
 * helpers on a real ext4, the reference every view of a shared volume is held to: if a check
 * fails here, the check is wrong, not the file system.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { appendFromAll, checkAppendRecords, flockBlocksAcross, lockBlocksAcross } from '../faults/cross-node'
import { leftoversUnder, makeTempDir, removeDir } from '../helpers/daemon'
import { runCommand } from '../helpers/run'

const SUITE = path.join(__dirname, '..', 'faults', 'posix-suite.js')

function missingHere(): string[] {
  const missing: string[] = []
  if (process.getuid?.() !== 0) missing.push('root (run the tests as root)')
  if (!existsSync('/dev/loop-control')) missing.push('/dev/loop-control (load the loop module)')
  for (const tool of ['mkfs.ext4', 'mount', 'umount', 'python3']) {
    try {
      execFileSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { stdio: 'ignore' })
    } catch {
      missing.push(`${tool} (run scripts/setup.sh)`)
    }
  }
  return missing
}

const missing = missingHere()
if (missing.length > 0) throw new Error(`the POSIX suite test cannot run here; missing: ${missing.join(', ')}`)

const dir = makeTempDir('pxd-posix-')
const image = path.join(dir, 'ext4.img')
const mountpoint = path.join(dir, 'mnt')
const mounted = (): boolean => readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mountpoint)

test.before(async () => {
  mkdirSync(mountpoint)
  execFileSync('truncate', ['-s', '256M', image])
  const mkfs = await runCommand('mkfs.ext4', ['-q', '-F', image], 60_000)
  if (mkfs.code !== 0) throw new Error(`mkfs.ext4 ${image} failed: ${mkfs.out}`)
  const mount = await runCommand('mount', ['-o', 'loop', image, mountpoint], 30_000)
  if (mount.code !== 0) throw new Error(`mount -o loop ${image} failed (no free loop device?): ${mount.out}`)
})

test.after.always(async () => {
  if (mounted()) {
    const umount = await runCommand('umount', [mountpoint], 30_000)
    if (umount.code !== 0) await runCommand('umount', ['-l', mountpoint], 30_000)
  }
  const left = leftoversUnder(dir)
  if (left.length > 0) throw new Error(`left behind, so ${dir} is kept: ${left.join(', ')}`)
  removeDir(dir)
})

test('every check of the POSIX suite passes on ext4', async (t) => {
  const r = await runCommand(process.execPath, [SUITE, mountpoint], 240_000)
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { check?: string; ok?: boolean; detail?: string; done?: boolean; passed?: number; failed?: number })
  for (const l of lines) if (l.check !== undefined) t.log(`${l.ok ? 'ok  ' : 'FAIL'} ${l.check}: ${l.detail}`)
  const failed = lines.filter((l) => l.check !== undefined && !l.ok).map((l) => `${l.check}: ${l.detail}`)
  t.deepEqual(failed, [], `failed checks:\n${failed.join('\n')}`)
  const done = lines.find((l) => l.done)
  t.truthy(done, `the suite ran to the end; stderr: ${r.stderr}`)
  t.is(done?.failed, 0)
  t.true((done?.passed ?? 0) >= 20, `${done?.passed} checks passed`)
  t.is(r.code, 0, `exit code; stderr: ${r.stderr}`)
  t.deepEqual(execFileSync('ls', ['-A', mountpoint], { encoding: 'utf8' }).trim().split('\n'), ['lost+found'], 'the suite removed its directory')
})

test('appends from two views of one directory all land whole; locks through one view block the other', async (t) => {
  const shared = path.join(mountpoint, 'shared')
  mkdirSync(shared)
  const run = await appendFromAll([shared, shared], 'appends.log', 500, 128)
  t.deepEqual(run, { writers: 2, records: 500, recordBytes: 128 })
  const check = await checkAppendRecords(path.join(shared, 'appends.log'), run)
  t.true(check.ok, check.detail)
  t.is(check.size, 2 * 500 * 128)
  for (const result of [await lockBlocksAcross(shared, shared, 'lockfile'), await flockBlocksAcross(shared, shared, 'lockfile')]) {
    t.log(result.detail)
    t.true(result.ok, result.detail)
    t.regex(result.whileHeld, /^(EAGAIN|EWOULDBLOCK|EACCES)$/)
    t.is(result.afterRelease, 'ok')
    t.false(result.gotBeforeRelease)
    t.true(result.waitedAfterReleaseMs !== null && result.waitedAfterReleaseMs >= 0)
  }
})
