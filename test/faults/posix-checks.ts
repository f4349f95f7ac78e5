/**
 * The checks of the POSIX behaviour suite (posix-suite.ts) on data, names and links, and the
 * helpers the others (posix-access-checks.ts) share. Each check runs in a fresh directory of
 * its own, throws on the first behaviour that differs from Linux ext4's, and otherwise
 * returns a line saying what it saw. Run as root, with umask 022.
 */
import { createHash, randomBytes } from 'node:crypto'
import { constants, promises as fs } from 'node:fs'
import path from 'node:path'

export interface Check {
  name: string
  run: (dir: string) => Promise<string>
}

export const MiB = 1024 * 1024

export const show = (v: unknown): string => (typeof v === 'number' && v > 7 && Number.isInteger(v) && v < 0o100000 ? `${v} (0${v.toString(8)})` : JSON.stringify(v))
export function ok(cond: boolean, what: string): void {
  if (!cond) throw new Error(what)
}
export function eq(actual: unknown, expected: unknown, what: string): void {
  if (actual !== expected) throw new Error(`${what}: got ${show(actual)}, expected ${show(expected)}`)
}
/** 'ok' or the error code the operation failed with. */
export async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'ok'
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err)
  }
}
export async function expect(what: string, p: Promise<unknown>, ...codes: string[]): Promise<string> {
  const got = await outcome(p)
  if (!codes.includes(got)) throw new Error(`${what}: got ${got}, expected ${codes.join(' or ')}`)
  return got
}
export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
export const perms = async (p: string): Promise<number> => (await fs.lstat(p)).mode & 0o7777
export const sec = (ms: number): number => Math.floor(ms / 1000)
export const names = async (d: string): Promise<string> => (await fs.readdir(d)).sort().join(',')
export async function readAt(file: string, pos: number, len: number): Promise<Buffer> {
  const h = await fs.open(file, 'r')
  try {
    const buf = Buffer.alloc(len)
    const { bytesRead } = await h.read(buf, 0, len, pos)
    return buf.subarray(0, bytesRead)
  } finally {
    await h.close()
  }
}

async function writeRead(d: string): Promise<string> {
  const small = randomBytes(1000)
  const big = randomBytes(3 * MiB)
  await fs.writeFile(path.join(d, 'small'), small)
  const h = await fs.open(path.join(d, 'big'), 'w')
  try {
    // Odd-sized pieces, so writes straddle page and block boundaries.
    for (let off = 0; off < big.length; off += 100_003) await h.write(big, off, Math.min(100_003, big.length - off), off)
    await h.sync()
  } finally {
    await h.close()
  }
  eq(sha(await fs.readFile(path.join(d, 'small'))), sha(small), 'sha256 of the 1000-byte file read back')
  eq(sha(await fs.readFile(path.join(d, 'big'))), sha(big), 'sha256 of the 3 MiB file read back')
  for (let i = 0; i < 20; i++) {
    const pos = Math.floor(Math.random() * big.length)
    const len = 1 + Math.floor(Math.random() * 70_000)
    ok((await readAt(path.join(d, 'big'), pos, len)).equals(big.subarray(pos, pos + len)), `pread of ${len} bytes at ${pos} differs`)
  }
  const st = await fs.stat(path.join(d, 'big'))
  eq(st.size, big.length, '3 MiB file size')
  ok(st.blksize > 0, `st_blksize ${st.blksize}`)
  ok(st.blocks * 512 >= st.size && st.blocks * 512 <= st.size + MiB, `3 MiB file has ${st.blocks} blocks of 512 bytes`)
  const s = await fs.stat(path.join(d, 'small'))
  ok(s.size === 1000 && s.blocks > 0 && s.blocks * 512 <= 64 * 1024, `small file: size ${s.size}, ${s.blocks} blocks`)
  return `1000 B and 3 MiB random files read back identical (sha256 and 20 preads); 3 MiB file: ${st.blocks} blocks, blksize ${st.blksize}`
}

async function pwrite(d: string): Promise<string> {
  const f = path.join(d, 'f')
  let model = Buffer.alloc(10_000, 0x61)
  await fs.writeFile(f, model)
  const h = await fs.open(f, 'r+')
  try {
    const writes: Array<[number, Buffer]> = [[100, Buffer.alloc(50, 0x58)], [4090, randomBytes(20)], [9990, randomBytes(30)], [MiB + 7, randomBytes(10)]]
    for (const [pos, buf] of writes) {
      eq((await h.write(buf, 0, buf.length, pos)).bytesWritten, buf.length, `pwrite at ${pos}`)
      if (pos + buf.length > model.length) model = Buffer.concat([model, Buffer.alloc(pos + buf.length - model.length)])
      buf.copy(model, pos)
    }
    await h.sync()
    const st = await h.stat()
    eq(st.size, MiB + 17, 'size after a pwrite past EOF')
    ok(st.blocks * 512 < 256 * 1024, `the hole takes no space: ${st.blocks} blocks for ${st.size} bytes`)
    eq((await h.read(Buffer.alloc(10), 0, 10, st.size + 100)).bytesRead, 0, 'bytes read past EOF')
  } finally {
    await h.close()
  }
  const back = await fs.readFile(f)
  ok(back.subarray(10_020, MiB + 7).every((b) => b === 0), 'the hole between the old EOF and the pwrite reads as zeros')
  eq(sha(back), sha(model), 'sha256 of the file after the pwrites')
  return 'pwrites inside, across 4 KiB, straddling EOF and 1 MiB past EOF land exactly; the hole reads as zeros and is sparse'
}

async function truncate(d: string): Promise<string> {
  const f = path.join(d, 'f')
  const data = randomBytes(10_000)
  await fs.writeFile(f, data)
  const h = await fs.open(f, 'r+')
  try {
    await h.truncate(3000)
    eq((await h.stat()).size, 3000, 'size after ftruncate shrink')
    await h.truncate(8000)
    eq((await h.stat()).size, 8000, 'size after ftruncate grow')
  } finally {
    await h.close()
  }
  ok((await fs.readFile(f)).equals(Buffer.concat([data.subarray(0, 3000), Buffer.alloc(5000)])), 'after shrink to 3000 and grow to 8000: the prefix kept, the rest zeros (old bytes must not come back)')
  await fs.truncate(f, 1000)
  ok((await fs.readFile(f)).equals(data.subarray(0, 1000)), 'truncate by path to 1000 keeps the prefix')
  await fs.truncate(f, 64 * MiB)
  const st = await fs.stat(f)
  eq(st.size, 64 * MiB, 'size after truncate by path to 64 MiB')
  ok(st.blocks * 512 < MiB, `growing by truncate allocates nothing: ${st.blocks} blocks`)
  ok((await readAt(f, 64 * MiB - 4096, 8192)).equals(Buffer.alloc(4096)), 'the tail of the grown file reads as 4096 zeros, then EOF')
  await fs.truncate(f, 0)
  const z = await fs.stat(f)
  ok(z.size === 0 && z.blocks === 0, `after truncate to 0: size ${z.size}, ${z.blocks} blocks`)
  await expect('truncate of a missing path', fs.truncate(path.join(d, 'missing'), 0), 'ENOENT')
  await expect('truncate of a directory', fs.truncate(d, 0), 'EISDIR')
  return 'ftruncate and truncate(2) shrink and grow exactly, grown ranges read as zeros and stay sparse, truncate to 0 frees all blocks'
}

async function openErrors(d: string): Promise<string> {
  const f = path.join(d, 'f')
  await fs.writeFile(f, 'x')
  await fs.symlink('nowhere', path.join(d, 'dangling'))
  await expect('O_CREAT|O_EXCL of an existing file', fs.open(f, 'wx'), 'EEXIST')
  await expect('O_CREAT|O_EXCL of a dangling symlink', fs.open(path.join(d, 'dangling'), 'wx'), 'EEXIST')
  await expect('O_CREAT|O_EXCL of a new name', fs.open(path.join(d, 'new'), 'wx').then((h) => h.close()), 'ok')
  await expect('open of a missing file', fs.open(path.join(d, 'missing'), 'r'), 'ENOENT')
  await expect('O_CREAT in a missing directory', fs.open(path.join(d, 'nodir', 'f'), 'w'), 'ENOENT')
  await expect('a file used as a directory', fs.open(path.join(f, 'x'), 'r'), 'ENOTDIR')
  await expect('open of a directory for writing', fs.open(d, 'r+'), 'EISDIR')
  await expect('O_NOFOLLOW on a symlink', fs.open(path.join(d, 'dangling'), constants.O_RDONLY | constants.O_NOFOLLOW), 'ELOOP')
  await expect('a 255-byte name', fs.writeFile(path.join(d, 'n'.repeat(255)), 'x'), 'ok')
  await expect('a 256-byte name', fs.writeFile(path.join(d, 'n'.repeat(256)), 'x'), 'ENAMETOOLONG')
  eq(await names(d), ['dangling', 'f', 'n'.repeat(255), 'new'].sort().join(','), 'names after the failed opens')
  return 'EEXIST, ENOENT, ENOTDIR, EISDIR, ELOOP (O_NOFOLLOW), ENAMETOOLONG (256 bytes; 255 works) as ext4'
}

async function dirErrors(d: string): Promise<string> {
  const at = (n: string): string => path.join(d, n)
  await fs.mkdir(at('dir'))
  await fs.writeFile(at('dir/f'), 'x')
  await fs.writeFile(at('file'), 'x')
  await expect('mkdir of an existing directory', fs.mkdir(at('dir')), 'EEXIST')
  await expect('mkdir over a file', fs.mkdir(at('file')), 'EEXIST')
  await expect('rmdir of a non-empty directory', fs.rmdir(at('dir')), 'ENOTEMPTY')
  await expect('unlink of a directory', fs.unlink(at('dir')), 'EISDIR')
  await expect('rmdir of a file', fs.rmdir(at('file')), 'ENOTDIR')
  await expect('rmdir of a missing name', fs.rmdir(at('missing')), 'ENOENT')
  await expect('rmdir of "dir/."', fs.rmdir(`${at('dir')}/.`), 'EINVAL')
  eq(await names(d), 'dir,file', 'names after the failed calls')
  return 'mkdir existing EEXIST, rmdir non-empty ENOTEMPTY, unlink dir EISDIR (Linux), rmdir file ENOTDIR, rmdir "." EINVAL'
}

async function renameErrors(d: string): Promise<string> {
  const at = (n: string): string => path.join(d, n)
  for (const x of ['a/b/c', 'empty', 'full']) await fs.mkdir(at(x), { recursive: true })
  await fs.writeFile(at('full/x'), 'x')
  await fs.writeFile(at('file'), 'x')
  await expect('rename of a file over a directory', fs.rename(at('file'), at('empty')), 'EISDIR')
  await expect('rename of a directory over a file', fs.rename(at('empty'), at('file')), 'ENOTDIR')
  await expect('rename of a directory into its own child', fs.rename(at('a'), at('a/b/c/a')), 'EINVAL')
  await expect('rename of a directory over a non-empty one', fs.rename(at('empty'), at('full')), 'ENOTEMPTY')
  await expect('rename of a missing name', fs.rename(at('missing'), at('x')), 'ENOENT')
  await expect('rename into a missing directory', fs.rename(at('file'), at('nodir/file')), 'ENOENT')
  await expect('rename of a directory over an empty one', fs.rename(at('a'), at('empty')), 'ok')
  eq(await names(d), 'empty,file,full', 'names after the renames')
  eq(await names(at('empty/b')), 'c', 'the moved tree')
  return 'file over dir EISDIR, dir over file ENOTDIR, dir into own child EINVAL, over non-empty dir ENOTEMPTY; dir over empty dir replaces it'
}

async function renameReplace(d: string): Promise<string> {
  const at = (n: string): string => path.join(d, n)
  await fs.writeFile(at('a'), 'old contents')
  await fs.writeFile(at('b'), 'new')
  const inoB = (await fs.stat(at('b'))).ino
  const held = await fs.open(at('a'), 'r')
  try {
    await fs.rename(at('b'), at('a'))
    eq(await fs.readFile(at('a'), 'utf8'), 'new', 'contents under the old name after rename over it')
    eq((await fs.stat(at('a'))).ino, inoB, 'inode under the name: the renamed one')
    await expect('stat of the source name after rename', fs.stat(at('b')), 'ENOENT')
    eq(await names(d), 'a', 'names after rename over an existing file')
    eq((await held.readFile()).toString(), 'old contents', 'a descriptor open on the replaced file still reads it')
    eq((await held.stat()).nlink, 0, 'nlink of the replaced file')
  } finally {
    await held.close()
  }
  await fs.link(at('a'), at('twin'))
  await fs.rename(at('a'), at('twin'))
  eq(await names(d), 'a,twin', 'rename between two links of one inode does nothing (POSIX), names')
  return 'rename over a file swaps in the new inode under one name; open descriptors keep the old one; rename between hard links is a no-op'
}

async function hardLink(d: string): Promise<string> {
  const at = (n: string): string => path.join(d, n)
  await fs.writeFile(at('f'), 'shared')
  eq((await fs.stat(at('f'))).nlink, 1, 'nlink of a new file')
  await fs.link(at('f'), at('g'))
  const [f, g] = [await fs.stat(at('f')), await fs.stat(at('g'))]
  ok(f.nlink === 2 && g.nlink === 2, `nlink after link: ${f.nlink}, ${g.nlink}`)
  eq(g.ino, f.ino, 'st_ino of the two names')
  await fs.appendFile(at('g'), '+more')
  eq(await fs.readFile(at('f'), 'utf8'), 'shared+more', 'a write through one name read through the other')
  await fs.unlink(at('f'))
  eq((await fs.stat(at('g'))).nlink, 1, 'nlink after unlinking one name')
  eq(await fs.readFile(at('g'), 'utf8'), 'shared+more', 'contents under the remaining name')
  await fs.writeFile(at('h'), 'h')
  await fs.mkdir(at('dir'))
  await expect('link onto an existing name', fs.link(at('g'), at('h')), 'EEXIST')
  await expect('link of a directory', fs.link(at('dir'), at('dir2')), 'EPERM')
  await expect('link of a missing file', fs.link(at('missing'), at('x')), 'ENOENT')
  return 'nlink 1 -> 2 -> 1, one st_ino, contents shared; link onto existing EEXIST, of a dir EPERM'
}

async function symlinks(d: string): Promise<string> {
  const at = (n: string): string => path.join(d, n)
  await fs.writeFile(at('target'), 'through the link')
  await fs.mkdir(at('sub'))
  await fs.symlink('target', at('l'))
  await fs.symlink('../target', at('sub/up'))
  const outside = `/posix-suite-outside-${randomBytes(6).toString('hex')}/etc/passwd`
  await fs.symlink(outside, at('abs'))
  const long = `${'x'.repeat(200)}/${'y'.repeat(799)}`
  await fs.symlink(long, at('long'))
  eq(await fs.readlink(at('l')), 'target', 'readlink')
  const [ls, s, t] = [await fs.lstat(at('l')), await fs.stat(at('l')), await fs.stat(at('target'))]
  ok(ls.isSymbolicLink() && ls.size === 6, `lstat: symlink ${ls.isSymbolicLink()}, size ${ls.size} (the target's length, 6)`)
  ok(s.isFile() && s.ino === t.ino && s.ino !== ls.ino, 'stat follows the link to the target')
  eq(await fs.readFile(at('sub/up'), 'utf8'), 'through the link', 'reading through a relative link ../target')
  eq(await fs.readlink(at('abs')), outside, 'readlink of a link to an absolute path outside')
  await expect('stat through the absolute link (its target does not exist here)', fs.stat(at('abs')), 'ENOENT')
  eq(await fs.readlink(at('long')), long, 'readlink of a 1000-byte target')
  await fs.symlink('loop-b', at('loop-a'))
  await fs.symlink('loop-a', at('loop-b'))
  await expect('stat of a symlink loop', fs.stat(at('loop-a')), 'ELOOP')
  await expect('symlink onto an existing name', fs.symlink('x', at('l')), 'EEXIST')
  await expect('readlink of a regular file', fs.readlink(at('target')), 'EINVAL')
  return 'symlink/readlink round-trip (6 and 1000 bytes), lstat vs stat, ../ target, absolute outside target kept as text, ELOOP, EEXIST, EINVAL'
}

async function readdirSmall(d: string): Promise<string> {
  const at = (n: string): string => path.join(d, n)
  const expected = new Set<string>()
  for (let i = 0; i < 10; i++) {
    await fs.writeFile(at(`file-${i}`), String(i))
    expected.add(`file-${i}`)
  }
  for (const s of ['sub1', 'sub2', 'sub3']) {
    await fs.mkdir(at(s))
    expected.add(s)
  }
  const list = (): string => [...expected].sort().join(',')
  eq(await names(d), list(), 'readdir after creating 10 files and 3 dirs')
  const types = await fs.readdir(d, { withFileTypes: true })
  ok(types.every((e) => e.isDirectory() === e.name.startsWith('sub') && e.isFile() === e.name.startsWith('file')), 'd_type of the entries')
  eq((await fs.stat(d)).nlink, 5, 'nlink of a directory with 3 subdirectories')
  await fs.rename(at('file-1'), at('renamed'))
  await fs.rename(at('file-2'), at('sub1/moved'))
  await fs.unlink(at('file-3'))
  await fs.rmdir(at('sub3'))
  for (const n of ['file-1', 'file-2', 'file-3', 'sub3']) expected.delete(n)
  expected.add('renamed')
  eq(await names(d), list(), 'readdir after renames, a move out, an unlink and an rmdir')
  eq(await names(at('sub1')), 'moved', 'readdir of the directory moved into')
  eq((await fs.stat(d)).nlink, 4, 'nlink of the directory after an rmdir')
  return 'readdir exact after create, rename, move, unlink, rmdir; d_type right; dir nlink 2 + subdirs'
}

async function readdirMany(d: string): Promise<string> {
  // Long names, so a listing takes several getdents calls.
  const name = (i: number): string => `a-file-with-a-long-name-so-the-listing-spans-several-getdents-calls-${String(i).padStart(4, '0')}`
  const expected = new Set<string>()
  for (let i = 0; i < 1000; i += 50) {
    await Promise.all(Array.from({ length: 50 }, (_, j) => fs.writeFile(path.join(d, name(i + j)), '')))
    for (let j = 0; j < 50; j++) expected.add(name(i + j))
  }
  const compare = async (when: string): Promise<void> => {
    const listed = await fs.readdir(d)
    const dir = await fs.opendir(d, { bufferSize: 7 })
    const streamed: string[] = []
    for await (const e of dir) streamed.push(e.name)
    for (const [how, got] of [['readdir', listed], ['opendir', streamed]] as const) {
      const extra = got.filter((n) => !expected.has(n))
      const missing = [...expected].filter((n) => !got.includes(n))
      ok(got.length === expected.size && extra.length === 0 && missing.length === 0,
        `${how} ${when}: ${got.length} names for ${expected.size}; extra ${extra.slice(0, 3).join(' ')}; missing ${missing.slice(0, 3).join(' ')}`)
    }
  }
  await compare('after creating 1000 files')
  for (let i = 0; i < 100; i++) {
    await fs.rename(path.join(d, name(i)), path.join(d, `renamed-${i}`))
    expected.delete(name(i))
    expected.add(`renamed-${i}`)
    await fs.unlink(path.join(d, name(500 + i)))
    expected.delete(name(500 + i))
  }
  await compare('after 100 renames and 100 unlinks')
  return `1000 files listed exactly once (readdir and opendir), then ${expected.size} after 100 renames and 100 unlinks`
}

async function fsyncs(d: string): Promise<string> {
  const h = await fs.open(path.join(d, 'f'), 'w+')
  try {
    await h.write(randomBytes(100_000))
    await h.sync()
    await h.datasync()
  } finally {
    await h.close()
  }
  const r = await fs.open(path.join(d, 'f'), 'r')
  await r.sync().finally(() => r.close())
  const dh = await fs.open(d, 'r')
  try {
    await dh.sync()
    await dh.datasync()
  } finally {
    await dh.close()
  }
  return 'fsync and fdatasync succeed on a written file, a read-only descriptor and the directory'
}

async function unlinkedOpen(d: string): Promise<string> {
  const f = path.join(d, 'f')
  const h = await fs.open(f, 'w+')
  try {
    await h.write(Buffer.from('hello'), 0, 5, 0)
    await fs.unlink(f)
    await expect('stat of the unlinked name', fs.stat(f), 'ENOENT')
    eq(await names(d), '', 'names after the unlink')
    eq((await h.stat()).nlink, 0, 'fstat nlink of the unlinked file')
    const buf = Buffer.alloc(5)
    await h.read(buf, 0, 5, 0)
    eq(buf.toString(), 'hello', 'reading the unlinked file through its descriptor')
    await h.write(Buffer.from(' world'), 0, 6, 5)
    await h.sync()
    const all = Buffer.alloc(20)
    const { bytesRead } = await h.read(all, 0, 20, 0)
    eq(all.subarray(0, bytesRead).toString(), 'hello world', 'writing then reading back through the descriptor')
    await h.truncate(5)
    eq((await h.stat()).size, 5, 'ftruncate of the unlinked file')
  } finally {
    await h.close()
  }
  return 'an unlinked open file stays readable, writable, fsync-able and truncatable through its descriptor (nlink 0)'
}

/** Data, names and links. */
export const DATA_CHECKS: Check[] = [
  { name: 'write-read', run: writeRead },
  { name: 'pwrite-holes', run: pwrite },
  { name: 'truncate', run: truncate },
  { name: 'open-errors', run: openErrors },
  { name: 'dir-errors', run: dirErrors },
  { name: 'rename-errors', run: renameErrors },
  { name: 'rename-replace', run: renameReplace },
  { name: 'hard-link', run: hardLink },
  { name: 'symlink', run: symlinks },
  { name: 'readdir', run: readdirSmall },
  { name: 'readdir-1000', run: readdirMany },
  { name: 'fsync', run: fsyncs },
  { name: 'unlinked-open', run: unlinkedOpen },
]
