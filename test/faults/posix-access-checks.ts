/**
 * The POSIX suite's checks on modes, owners, times, a non-root user, concurrent appends,
 * locks and statfs (see posix-checks.ts). Run as root, with umask 022.
 */
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { appendFromAll, checkAppendRecords, flockBlocksAcross, holdLock, lockBlocksAcross, startChild, tryLock, type Child, type LockAcross } from './cross-node'
import { eq, MiB, names, ok, perms, sec, show, sleep, type Check } from './posix-checks'

/** The unprivileged user of the checks. */
const USER = { uid: 1000, gid: 1000 }

async function chmodCtime(d: string): Promise<string> {
  const f = path.join(d, 'f')
  await fs.writeFile(f, 'x')
  eq(await perms(f), 0o644, 'mode of a new file (umask 022)')
  await fs.mkdir(path.join(d, 'dir'))
  eq(await perms(path.join(d, 'dir')), 0o755, 'mode of a new directory')
  await (await fs.open(path.join(d, 'private'), 'wx', 0o600)).close()
  eq(await perms(path.join(d, 'private')), 0o600, 'mode of a file created with 0600')
  for (const m of [0o640, 0o4755, 0o2755, 0, 0o777]) {
    await fs.chmod(f, m)
    eq(await perms(f), m, `mode after chmod ${m.toString(8)}`)
  }
  await fs.chmod(path.join(d, 'dir'), 0o1777)
  eq(await perms(path.join(d, 'dir')), 0o1777, 'mode of a directory after chmod 1777')
  const h = await fs.open(f, 'r')
  await h.chmod(0o600).finally(() => h.close())
  eq(await perms(f), 0o600, 'mode after fchmod 600')
  const before = await fs.stat(f)
  await sleep(1100)
  await fs.chmod(f, 0o604)
  const after = await fs.stat(f)
  ok(after.ctimeMs > before.ctimeMs, `ctime after chmod: ${after.ctime.toISOString()}, before ${before.ctime.toISOString()}`)
  eq(after.mtimeMs, before.mtimeMs, 'mtime after chmod (unchanged)')
  return 'new files 0644, dirs 0755, O_CREAT 0600 kept; chmod/fchmod incl. setuid, setgid, sticky exact; chmod moves ctime, not mtime'
}

async function setgidDir(d: string): Promise<string> {
  const sg = path.join(d, 'sg')
  await fs.mkdir(sg)
  await fs.chown(sg, 0, USER.gid)
  await fs.chmod(sg, 0o2775)
  const st = await fs.stat(sg)
  ok((st.mode & 0o7777) === 0o2775 && st.gid === USER.gid, `setgid dir: mode ${show(st.mode & 0o7777)}, gid ${st.gid}`)
  await fs.writeFile(path.join(sg, 'f'), 'x')
  eq((await fs.stat(path.join(sg, 'f'))).gid, USER.gid, "group of root's file in a setgid dir (the dir's)")
  await fs.mkdir(path.join(sg, 'sub'))
  const sub = await fs.stat(path.join(sg, 'sub'))
  ok(sub.gid === USER.gid && (sub.mode & 0o2000) !== 0, `subdir of a setgid dir: gid ${sub.gid}, mode ${show(sub.mode & 0o7777)} (must keep setgid)`)
  await fs.mkdir(path.join(d, 'plain'))
  await fs.chown(path.join(d, 'plain'), 0, USER.gid)
  await fs.writeFile(path.join(d, 'plain', 'f'), 'x')
  eq((await fs.stat(path.join(d, 'plain', 'f'))).gid, 0, "group of root's file in a dir without setgid (root's)")
  return "files and subdirs in a setgid dir take its group (gid 1000), subdirs keep setgid; without setgid the creator's group"
}

async function chown(d: string): Promise<string> {
  const f = path.join(d, 'f')
  await fs.writeFile(f, 'x')
  await fs.chown(f, USER.uid, USER.gid)
  let st = await fs.stat(f)
  ok(st.uid === USER.uid && st.gid === USER.gid, `owner after chown 1000:1000: ${st.uid}:${st.gid}`)
  await fs.symlink('f', path.join(d, 'l'))
  await fs.lchown(path.join(d, 'l'), 1001, 1001)
  const ls = await fs.lstat(path.join(d, 'l'))
  st = await fs.stat(f)
  ok(ls.uid === 1001 && ls.gid === 1001 && st.uid === USER.uid && st.gid === USER.gid, `lchown: link ${ls.uid}:${ls.gid}, target ${st.uid}:${st.gid}`)
  const x = path.join(d, 'x')
  await fs.writeFile(x, '#!/bin/sh\n')
  await fs.chmod(x, 0o6755)
  await fs.chown(x, USER.uid, USER.gid)
  eq(await perms(x), 0o755, 'mode of a setuid+setgid executable after chown (both bits cleared, even by root)')
  return 'chown and lchown set owner and group exactly; chown clears setuid/setgid of an executable'
}

async function utimes(d: string): Promise<string> {
  const f = path.join(d, 'f')
  const started = Date.now()
  await fs.writeFile(f, 'x')
  await fs.utimes(f, 1_000_000_000, 1_234_567_890)
  let st = await fs.stat(f)
  ok(sec(st.atimeMs) === 1_000_000_000 && sec(st.mtimeMs) === 1_234_567_890, `utimes: atime ${st.atime.toISOString()}, mtime ${st.mtime.toISOString()}`)
  ok(st.ctimeMs >= started - 2000, `utimes moves ctime to now: ${st.ctime.toISOString()}`)
  await fs.utimes(f, 2_000_000_000.5, 1_500_000_000.25)
  st = await fs.stat(f)
  ok(sec(st.atimeMs) === 2_000_000_000 && sec(st.mtimeMs) === 1_500_000_000, `utimes with fractions: atime ${st.atime.toISOString()}, mtime ${st.mtime.toISOString()}`)
  const h = await fs.open(f, 'r+')
  try {
    await h.utimes(1_100_000_000, 1_200_000_000)
    st = await h.stat()
    ok(sec(st.atimeMs) === 1_100_000_000 && sec(st.mtimeMs) === 1_200_000_000, `futimes: atime ${st.atime.toISOString()}, mtime ${st.mtime.toISOString()}`)
    await h.write(Buffer.from('y'), 0, 1, 0)
  } finally {
    await h.close()
  }
  st = await fs.stat(f)
  ok(st.mtimeMs >= started - 2000, `a write moves mtime to now: ${st.mtime.toISOString()}`)
  await fs.symlink('f', path.join(d, 'l'))
  await fs.lutimes(path.join(d, 'l'), 1_300_000_000, 1_300_000_000)
  const ls = await fs.lstat(path.join(d, 'l'))
  st = await fs.stat(f)
  ok(sec(ls.mtimeMs) === 1_300_000_000 && sec(st.mtimeMs) !== 1_300_000_000, 'lutimes sets the link, not its target')
  return 'utimes/futimes/lutimes set atime and mtime to the second (fractions too), move ctime; a write moves mtime'
}

async function appendConcurrent(d: string): Promise<string> {
  const run = await appendFromAll([d, d, d, d], 'log', 50, 100)
  const check = await checkAppendRecords(path.join(d, 'log'), run)
  ok(check.ok, check.detail)
  return `4 processes x 50 O_APPEND writes of 100 bytes: ${check.detail}`
}

/** Run as uid/gid 1000 in cwd d; ops name a sync fs function and its arguments. */
const AS_USER_JS = `
const fs = require('fs'), out = {}
for (const [name, fn, ...args] of JSON.parse(process.argv[1])) {
  try {
    const r = fs[fn](...args)
    out[name] = typeof r === 'string' ? 'ok:' + r : r instanceof fs.Stats ? 'ok:' + (r.mode & 0o7777).toString(8) + ':' + r.uid + ':' + r.gid : 'ok'
  } catch (e) { out[name] = e.code || String(e) }
}
process.stdout.write(JSON.stringify(out) + '\\n')
`

async function asUser(d: string, ops: Array<[string, string, ...unknown[]]>): Promise<Record<string, string>> {
  const c: Child = startChild(process.execPath, ['-e', AS_USER_JS, JSON.stringify(ops)], { ...USER, cwd: d, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } })
  try {
    const line = await c.waitFor(/^\{/)
    eq(await c.exited(), 0, `exit of the uid 1000 process (stderr: ${c.stderr().trim()})`)
    return JSON.parse(line) as Record<string, string>
  } finally {
    c.end()
  }
}

async function nonRoot(d: string): Promise<string> {
  const at = (n: string): string => path.join(d, n)
  for (const [dir, m] of [['d755', 0o755], ['d777', 0o777], ['sticky', 0o1777]] as const) {
    await fs.mkdir(at(dir))
    await fs.chmod(at(dir), m)
  }
  for (const [file, m] of [['secret', 0o600], ['public', 0o644], ['sticky/rootfile', 0o644], ['d777/rootfile', 0o644]] as const) {
    await fs.writeFile(at(file), file)
    await fs.chmod(at(file), m)
  }
  // Relative paths from the cwd, so the directories above d need not be searchable by uid 1000.
  const got = await asUser(d, [
    ['create in 0755 root dir', 'writeFileSync', 'd755/x', 'x'],
    ['mkdir in 0755 root dir', 'mkdirSync', 'd755/y'],
    ['create in 0777 dir', 'writeFileSync', 'd777/mine', 'mine'],
    ['stat of own new file', 'statSync', 'd777/mine'],
    ['chmod own file', 'chmodSync', 'd777/mine', 0o600],
    ["chmod root's file", 'chmodSync', 'public', 0o666],
    ["utimes of root's file", 'utimesSync', 'public', 1_000_000_000, 1_000_000_000],
    ['read 0600 root file', 'readFileSync', 'secret', 'utf8'],
    ['read 0644 root file', 'readFileSync', 'public', 'utf8'],
    ['write 0644 root file', 'writeFileSync', 'public', 'overwritten'],
    ["unlink root's file in 1777 dir", 'unlinkSync', 'sticky/rootfile'],
    ["rename root's file in 1777 dir", 'renameSync', 'sticky/rootfile', 'sticky/moved'],
    ['create own file in 1777 dir', 'writeFileSync', 'sticky/own', 'own'],
    ['unlink own file in 1777 dir', 'unlinkSync', 'sticky/own'],
    ["unlink root's file in 0777 dir", 'unlinkSync', 'd777/rootfile'],
    ['chown own file to uid 1001', 'chownSync', 'd777/mine', 1001, 1000],
    ['chown own file to group 0', 'chownSync', 'd777/mine', 1000, 0],
    ['chown own file to itself', 'chownSync', 'd777/mine', 1000, 1000],
  ])
  const want: Record<string, string[]> = {
    'create in 0755 root dir': ['EACCES'], 'mkdir in 0755 root dir': ['EACCES'], 'create in 0777 dir': ['ok'],
    'stat of own new file': ['ok:644:1000:1000'], 'chmod own file': ['ok'], "chmod root's file": ['EPERM'],
    "utimes of root's file": ['EPERM'], 'read 0600 root file': ['EACCES'], 'read 0644 root file': ['ok:public'],
    'write 0644 root file': ['EACCES'], "unlink root's file in 1777 dir": ['EPERM', 'EACCES'],
    "rename root's file in 1777 dir": ['EPERM', 'EACCES'], 'create own file in 1777 dir': ['ok'],
    'unlink own file in 1777 dir': ['ok'], "unlink root's file in 0777 dir": ['ok'],
    'chown own file to uid 1001': ['EPERM'], 'chown own file to group 0': ['EPERM'], 'chown own file to itself': ['ok'],
  }
  const wrong = Object.entries(want).filter(([k, v]) => !v.includes(got[k] ?? 'missing')).map(([k, v]) => `${k}: ${got[k]} (expected ${v.join(' or ')})`)
  ok(wrong.length === 0, wrong.join('; '))
  const mine = await fs.stat(at('d777/mine'))
  ok(mine.uid === USER.uid && mine.gid === USER.gid && (mine.mode & 0o7777) === 0o600, `uid 1000's file as root sees it: ${mine.uid}:${mine.gid} ${show(mine.mode & 0o7777)}`)
  eq(await fs.readFile(at('public'), 'utf8'), 'public', "root's 0644 file after uid 1000 tried to write it")
  eq(await names(at('sticky')), 'rootfile', 'names in the sticky dir')
  eq(await names(at('d777')), 'mine', 'names in the 0777 dir')
  return `as uid 1000: ${Object.entries(got).map(([k, v]) => `${k} ${v}`).join(', ')}`
}

function lockOk(r: LockAcross): string {
  ok(r.ok, r.detail)
  return r.detail
}

async function lockRanges(d: string): Promise<string> {
  const f = path.join(d, 'f')
  const holders: Child[] = []
  try {
    holders.push(await holdLock('lockf', f, { start: 0, len: 100 }))
    eq(await tryLock('lockf', f, { start: 100, len: 100 }), 'ok', 'lockf of bytes 100-199 while another process holds 0-99')
    ok(['EAGAIN', 'EWOULDBLOCK', 'EACCES'].includes(await tryLock('lockf', f, { start: 50, len: 10 })), 'lockf of bytes 50-59 while another process holds 0-99 must fail')
    holders.push(await holdLock('lockf', f, { shared: true, start: 1000, len: 10 }))
    eq(await tryLock('lockf', f, { shared: true, start: 1000, len: 10 }), 'ok', 'a second shared lockf')
    ok(['EAGAIN', 'EWOULDBLOCK', 'EACCES'].includes(await tryLock('lockf', f, { start: 1005, len: 1 })), 'exclusive lockf inside a shared one must fail')
    holders.push(await holdLock('flock', f, { shared: true }))
    eq(await tryLock('flock', f, { shared: true }), 'ok', 'a second shared flock')
    ok(['EAGAIN', 'EWOULDBLOCK'].includes(await tryLock('flock', f)), 'exclusive flock while a shared one is held must fail')
  } finally {
    for (const h of holders) h.end()
  }
  return 'lockf byte ranges: disjoint granted, overlapping refused; shared lockf and flock granted together, exclusive refused'
}

async function statfs(d: string): Promise<string> {
  const s = await fs.statfs(d)
  const sane = s.bsize > 0 && s.blocks > 0 && s.bfree <= s.blocks && s.bavail <= s.bfree && s.bfree > 0 && s.files > 0 && s.ffree <= s.files && s.ffree > 0
  ok(sane, `statfs: ${JSON.stringify(s)}`)
  const h = await fs.open(path.join(d, 'f'), 'w')
  try {
    for (let i = 0; i < 16; i++) await h.write(randomBytes(MiB))
    await h.sync()
  } finally {
    await h.close()
  }
  const after = await fs.statfs(d)
  const used = (s.bfree - after.bfree) * s.bsize
  ok(used >= 8 * MiB, `free space after writing 16 MiB went down by ${used} bytes (${s.bfree} -> ${after.bfree} blocks of ${s.bsize})`)
  return `type 0x${s.type.toString(16)}, bsize ${s.bsize}, ${s.blocks} blocks (${s.bfree} free, ${s.bavail} available), ${s.files} inodes (${s.ffree} free); writing 16 MiB took ${Math.round(used / MiB)} MiB`
}

/** Modes, owners, times, users, concurrent appends, locks, statfs. */
export const ACCESS_CHECKS: Check[] = [
  { name: 'chmod-ctime', run: chmodCtime },
  { name: 'setgid-dir', run: setgidDir },
  { name: 'chown', run: chown },
  { name: 'utimes', run: utimes },
  { name: 'append-concurrent', run: appendConcurrent },
  { name: 'non-root', run: nonRoot },
  { name: 'lockf', run: async (d) => lockOk(await lockBlocksAcross(d, d, 'f')) },
  { name: 'flock', run: async (d) => lockOk(await flockBlocksAcross(d, d, 'f')) },
  { name: 'lock-ranges-shared', run: lockRanges },
  { name: 'statfs', run: statfs },
]
