import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import test, { type ExecutionContext } from 'ava'
import { native } from '../../src/native/binding'
import type { ShareServerHandle } from '../../src/native/share-server-binding'

// These tests serve a real ext4 (a loop-mounted image): they run as root.

const MiB = 1 << 20
const INT64_MAX = 0x7fffffffffffffffn
const E = os.constants.errno

const OP = {
  LOOKUP: 1, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9, UNLINK: 10, RMDIR: 11,
  RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17, RELEASE: 18, FSYNC: 20, SETXATTR: 21,
  GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24, FLUSH: 25, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29,
  GETLK: 31, SETLK: 32, SETLKW: 33, ACCESS: 34, CREATE: 35, INTERRUPT: 36, FALLOCATE: 43, RENAME2: 45, LSEEK: 46,
  ROOT: 0x10001,
} as const

const O_RDONLY = 0
const O_WRONLY = 1
const O_RDWR = 2
const O_EXCL = 0o200
const O_APPEND = 0o2000
const F_RDLCK = 0
const F_WRLCK = 1
const F_UNLCK = 2
const FATTR_MODE = 1 << 0
const FATTR_UID = 1 << 1
const FATTR_SIZE = 1 << 3
const FATTR_MTIME = 1 << 5
const FUSE_LK_FLOCK = 1
const FUSE_RELEASE_FLOCK_UNLOCK = 2
const RENAME_NOREPLACE = 1
const kReplyWouldBlock = 1

// ---- wire encoding (native/share_wire.h) --------------------------------------

interface WireHandle {
  tag: bigint
  type: number
  bytes: Buffer
}

interface Caller {
  uid: number
  gid: number
  groups: number[]
}

const ROOT: Caller = { uid: 0, gid: 0, groups: [] }
const USER: Caller = { uid: 1000, gid: 1000, groups: [1000] }

const pad8 = (n: number) => (n + 7) & ~7

function encodeHandle(h: WireHandle): Buffer {
  const out = Buffer.alloc(16 + pad8(h.bytes.length))
  out.writeBigUInt64LE(h.tag, 0)
  out.writeInt32LE(h.type, 8)
  out.writeUInt32LE(h.bytes.length, 12)
  h.bytes.copy(out, 16)
  return out
}

interface RequestOptions {
  caller?: Caller
  /** Overrides of header fields, for malformed requests. */
  nhandles?: number
  bodyLen?: number
}

function request(opcode: number, handles: WireHandle[], body: Buffer = Buffer.alloc(0), o: RequestOptions = {}): Buffer {
  const caller = o.caller ?? ROOT
  const head = Buffer.alloc(32)
  head.writeUInt32LE(opcode, 0)
  head.writeUInt32LE(caller.uid, 4)
  head.writeUInt32LE(caller.gid, 8)
  head.writeUInt32LE(4242, 12)
  head.writeUInt16LE(caller.groups.length, 16)
  head.writeUInt8(o.nhandles ?? handles.length, 18)
  head.writeUInt32LE(o.bodyLen ?? body.length, 20)
  const groups = Buffer.alloc(pad8(caller.groups.length * 4))
  caller.groups.forEach((g, i) => groups.writeUInt32LE(g, i * 4))
  return Buffer.concat([head, groups, ...handles.map(encodeHandle), body])
}

interface Reply {
  error: number
  flags: number
  handle?: WireHandle
  body: Buffer
}

function decodeReply(buf: Buffer): Reply {
  if (buf.length < 16) throw new Error(`a reply of ${buf.length} bytes`)
  const error = buf.readInt32LE(0)
  const bodyLen = buf.readUInt32LE(4)
  const nhandles = buf.readUInt8(8)
  const flags = buf.readUInt8(9)
  let at = 16
  let handle: WireHandle | undefined
  if (nhandles === 1) {
    const n = buf.readUInt32LE(at + 12)
    handle = { tag: buf.readBigUInt64LE(at), type: buf.readInt32LE(at + 8), bytes: Buffer.from(buf.subarray(at + 16, at + 16 + n)) }
    at += 16 + pad8(n)
  }
  if (buf.length !== at + bodyLen) throw new Error(`reply of ${buf.length} bytes, header says ${at + bodyLen}`)
  return { error, flags, ...(handle ? { handle } : {}), body: buf.subarray(at) }
}

const name = (s: string) => Buffer.from(`${s}\0`)
const u32s = (...v: number[]) => {
  const b = Buffer.alloc(v.length * 4)
  v.forEach((x, i) => b.writeUInt32LE(x >>> 0, i * 4))
  return b
}
const u64 = (v: bigint | number) => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(BigInt(v))
  return b
}

const mkdirIn = (mode: number, dir: string) => Buffer.concat([u32s(mode, 0), name(dir)])
const createIn = (flags: number, mode: number, file: string) => Buffer.concat([u32s(flags, 0o100000 | mode, 0, 0), name(file)])
const openIn = (flags: number) => u32s(flags, 0)
function readIn(fh: bigint, offset: number | bigint, size: number): Buffer {
  const b = Buffer.alloc(40)
  b.writeBigUInt64LE(fh, 0)
  b.writeBigUInt64LE(BigInt(offset), 8)
  b.writeUInt32LE(size, 16)
  return b
}
function writeIn(fh: bigint, offset: number, data: Buffer): Buffer {
  const b = Buffer.alloc(40)
  b.writeBigUInt64LE(fh, 0)
  b.writeBigUInt64LE(BigInt(offset), 8)
  b.writeUInt32LE(data.length, 16)
  return Buffer.concat([b, data])
}
const releaseIn = (fh: bigint, releaseFlags = 0, lockOwner = 0n) => Buffer.concat([u64(fh), u32s(0, releaseFlags), u64(lockOwner)])
const flushIn = (fh: bigint, lockOwner: bigint) => Buffer.concat([u64(fh), u32s(0, 0), u64(lockOwner)])
function lkIn(fh: bigint, owner: bigint, type: number, start = 0n, end = INT64_MAX, lkFlags = 0): Buffer {
  return Buffer.concat([u64(fh), u64(owner), u64(start), u64(end), u32s(type, 0, lkFlags, 0)])
}
function setattrIn(valid: number, v: { mode?: number; uid?: number; gid?: number; size?: number; mtime?: number } = {}): Buffer {
  const b = Buffer.alloc(88)
  b.writeUInt32LE(valid, 0)
  b.writeBigUInt64LE(BigInt(v.size ?? 0), 16)
  b.writeBigUInt64LE(BigInt(v.mtime ?? 0), 40)
  b.writeUInt32LE(v.mode ?? 0, 68)
  b.writeUInt32LE(v.uid ?? 0, 76)
  b.writeUInt32LE(v.gid ?? 0, 80)
  return b
}

interface Attr {
  ino: bigint
  size: number
  mode: number
  nlink: number
  uid: number
  gid: number
  mtime: number
}

function decodeAttr(b: Buffer, at: number): Attr {
  return {
    ino: b.readBigUInt64LE(at),
    size: Number(b.readBigUInt64LE(at + 8)),
    mtime: Number(b.readBigUInt64LE(at + 32)),
    mode: b.readUInt32LE(at + 60),
    nlink: b.readUInt32LE(at + 64),
    uid: b.readUInt32LE(at + 68),
    gid: b.readUInt32LE(at + 72),
  }
}

interface Entry {
  handle: WireHandle
  attr: Attr
  nodeid: bigint
  entryValid: bigint
  attrValid: bigint
  /** CREATE: fuse_open_out.fh after the entry. */
  fh?: bigint
}

function entryOf(t: ExecutionContext, r: Reply, what: string): Entry {
  t.is(r.error, 0, `${what}: error ${r.error}`)
  if (r.error !== 0 || !r.handle) throw new Error(`${what} failed: ${r.error}`)
  return {
    handle: r.handle,
    nodeid: r.body.readBigUInt64LE(0),
    entryValid: r.body.readBigUInt64LE(16),
    attrValid: r.body.readBigUInt64LE(24),
    attr: decodeAttr(r.body, 40),
    ...(r.body.length >= 128 + 16 ? { fh: r.body.readBigUInt64LE(128) } : {}),
  }
}

interface Dirent {
  ino: bigint
  off: bigint
  type: number
  name: string
}

function decodeDirents(b: Buffer): Dirent[] {
  const out: Dirent[] = []
  for (let at = 0; at < b.length;) {
    const namelen = b.readUInt32LE(at + 16)
    out.push({
      ino: b.readBigUInt64LE(at),
      off: b.readBigUInt64LE(at + 8),
      type: b.readUInt32LE(at + 20),
      name: b.subarray(at + 24, at + 24 + namelen).toString(),
    })
    at += pad8(24 + namelen)
  }
  return out
}

// ---- fixture: a loop-mounted ext4 and a server on it ----------------------------

interface Volume {
  mnt: string
  tagHex: string
  tag: bigint
  h: ShareServerHandle
  root: WireHandle
  exec(client: number, req: Buffer): Promise<Reply>
  call(opcode: number, handles: WireHandle[], body?: Buffer, o?: RequestOptions & { client?: number }): Promise<Reply>
  reopen(): Promise<void>
}

function run(file: string, args: string[]): void {
  try {
    execFileSync(file, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer }
    if (e.code === 'ENOENT') throw new Error(`${file} is missing: these tests need it (e2fsprogs, util-linux)`)
    throw new Error(`${file} ${args.join(' ')} failed: ${e.stderr?.toString().trim() ?? e.message}`)
  }
}

const closeServer = (h: ShareServerHandle) => new Promise<void>((resolve) => native.shareServerClose(h, resolve))

async function volume(t: ExecutionContext): Promise<Volume> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pxd-share-server-'))
  const image = path.join(dir, 'image')
  const mnt = path.join(dir, 'mnt')
  let mounted = false
  let server: ShareServerHandle | undefined
  t.teardown(async () => {
    if (server) await closeServer(server)
    if (mounted) {
      try {
        execFileSync('umount', [mnt], { stdio: 'ignore' })
      } catch {
        execFileSync('umount', ['-l', mnt], { stdio: 'ignore' })
      }
    }
    fs.rmSync(dir, { recursive: true, force: true })
  })
  fs.mkdirSync(mnt)
  run('truncate', ['-s', '64M', image])
  run('mkfs.ext4', ['-q', '-F', image])
  try {
    run('mount', ['-o', 'loop', image, mnt])
  } catch (err) {
    throw new Error(`cannot loop-mount an ext4 image (are loop devices available?): ${(err as Error).message}`)
  }
  mounted = true
  const tag = randomBytes(8).readBigUInt64BE()
  const tagHex = tag.toString(16).padStart(16, '0')
  server = native.shareServerOpen(mnt, tagHex, 4)
  const v: Volume = {
    mnt,
    tagHex,
    tag,
    h: server,
    root: { tag, type: 0, bytes: Buffer.alloc(0) },
    exec: (client, req) =>
      new Promise((resolve, reject) =>
        native.shareServerExec(v.h, client, req, (reply) => {
          try {
            resolve(decodeReply(reply))
          } catch (err) {
            reject(err)
          }
        }),
      ),
    call: (opcode, handles, body, o = {}) => v.exec(o.client ?? 1, request(opcode, handles, body, o)),
    reopen: async () => {
      await closeServer(v.h)
      server = undefined
      v.h = native.shareServerOpen(mnt, tagHex, 4)
      server = v.h
    },
  }
  const root = await v.call(OP.ROOT, [])
  if (root.error !== 0 || !root.handle) throw new Error(`kOpRoot failed: ${root.error}`)
  v.root = root.handle
  return v
}

async function lookup(t: ExecutionContext, v: Volume, dir: WireHandle, file: string, caller = ROOT): Promise<Entry> {
  return entryOf(t, await v.call(OP.LOOKUP, [dir], name(file), { caller }), `lookup ${file}`)
}

async function create(t: ExecutionContext, v: Volume, dir: WireHandle, file: string, flags = O_RDWR, client = 1): Promise<Entry> {
  return entryOf(t, await v.call(OP.CREATE, [dir], createIn(flags, 0o644, file), { client }), `create ${file}`)
}

async function open(t: ExecutionContext, v: Volume, h: WireHandle, flags: number, client = 1): Promise<bigint> {
  const r = await v.call(OP.OPEN, [h], openIn(flags), { client })
  t.is(r.error, 0, `open: ${r.error}`)
  return r.body.readBigUInt64LE(0)
}

// ---- tests ---------------------------------------------------------------------

test('kOpRoot answers the root directory: its handle with the volume tag and its attributes', async (t) => {
  const v = await volume(t)
  const r = await v.call(OP.ROOT, [])
  t.is(r.error, 0)
  t.is(r.handle?.tag, v.tag)
  t.true((r.handle?.bytes.length ?? 0) > 0)
  t.is(r.body.length, 104)
  t.is(r.body.readBigUInt64LE(0), 1n, 'attr_valid 1 s')
  const attr = decodeAttr(r.body, 16)
  const st = fs.statSync(v.mnt, { bigint: true })
  t.is(attr.ino, st.ino)
  t.is(attr.mode, Number(st.mode))
  t.is(attr.uid, 0)
})

test('LOOKUP finds a file made on the mount, with its attributes; GETATTR agrees', async (t) => {
  const v = await volume(t)
  fs.writeFileSync(path.join(v.mnt, 'hello'), 'hello world')
  fs.chownSync(path.join(v.mnt, 'hello'), 1234, 5678)
  const e = await lookup(t, v, v.root, 'hello')
  const st = fs.statSync(path.join(v.mnt, 'hello'), { bigint: true })
  t.is(e.nodeid, 0n)
  t.is(e.entryValid, 1n)
  t.is(e.attrValid, 1n)
  t.is(e.handle.tag, v.tag)
  t.is(e.attr.ino, st.ino)
  t.is(e.attr.size, 11)
  t.is(e.attr.mode, Number(st.mode))
  t.is(e.attr.uid, 1234)
  t.is(e.attr.gid, 5678)
  t.is(e.attr.nlink, 1)
  const g = await v.call(OP.GETATTR, [e.handle], Buffer.alloc(16))
  t.is(g.error, 0)
  t.deepEqual(decodeAttr(g.body, 16), e.attr)
  t.is((await v.call(OP.LOOKUP, [v.root], name('missing'))).error, -E.ENOENT)
})

test('MKDIR, CREATE, WRITE and READ round-trip byte for byte, 1 MiB at a time', async (t) => {
  const v = await volume(t)
  const d = entryOf(t, await v.call(OP.MKDIR, [v.root], mkdirIn(0o755, 'd')), 'mkdir')
  t.is(d.attr.mode, 0o040755)
  t.true(fs.statSync(path.join(v.mnt, 'd')).isDirectory())
  const f = await create(t, v, d.handle, 'f', O_RDWR | O_EXCL)
  t.is(f.fh, BigInt(O_RDWR), 'fh: the open flags')
  t.is(f.attr.size, 0)
  const big = randomBytes(MiB)
  const small = randomBytes(777)
  const w1 = await v.call(OP.WRITE, [f.handle], writeIn(f.fh!, 0, big))
  t.is(w1.error, 0)
  t.is(w1.body.readUInt32LE(0), MiB)
  const w2 = await v.call(OP.WRITE, [f.handle], writeIn(f.fh!, MiB + 5, small))
  t.is(w2.body.readUInt32LE(0), 777)
  const r1 = await v.call(OP.READ, [f.handle], readIn(f.fh!, 0, MiB))
  t.is(r1.error, 0)
  t.true(r1.body.equals(big), '1 MiB read back')
  const r2 = await v.call(OP.READ, [f.handle], readIn(f.fh!, MiB, 4096))
  t.true(r2.body.equals(Buffer.concat([Buffer.alloc(5), small])), 'short read at the end of the file')
  t.is((await v.call(OP.READ, [f.handle], readIn(f.fh!, 0, MiB + 1))).error, -E.EINVAL, 'READ above kMaxDataBytes')
  t.is((await v.call(OP.FSYNC, [f.handle], Buffer.concat([u64(f.fh!), u32s(1, 0)]))).error, 0)
  t.is((await v.call(OP.FLUSH, [f.handle], flushIn(f.fh!, 9n))).error, 0)
  t.is((await v.call(OP.RELEASE, [f.handle], releaseIn(f.fh!))).error, 0)
  const onDisk = fs.readFileSync(path.join(v.mnt, 'd', 'f'))
  t.true(onDisk.equals(Buffer.concat([big, Buffer.alloc(5), small])), 'the file on the mount')
  t.is((await v.call(OP.CREATE, [d.handle], createIn(O_RDWR | O_EXCL, 0o644, 'f'))).error, -E.EEXIST)
  const stats = native.shareServerStats(v.h)
  t.is(stats.bytesWritten, MiB + 777)
  t.is(stats.bytesRead, MiB + 782)
  t.true(stats.requests >= 10)
  t.true(stats.openFds >= 1)
})

test('RENAME, RENAME2 and UNLINK change the names on the mount', async (t) => {
  const v = await volume(t)
  fs.writeFileSync(path.join(v.mnt, 'a'), 'A')
  fs.writeFileSync(path.join(v.mnt, 'b'), 'B')
  fs.mkdirSync(path.join(v.mnt, 'sub'))
  const sub = await lookup(t, v, v.root, 'sub')
  const rename = (from: string, to: string, dst = v.root) => v.call(OP.RENAME, [v.root, dst], Buffer.concat([u64(0), name(from), name(to)]))
  t.is((await rename('a', 'c')).error, 0)
  t.false(fs.existsSync(path.join(v.mnt, 'a')))
  t.is(fs.readFileSync(path.join(v.mnt, 'c'), 'utf8'), 'A')
  t.is((await rename('c', 'moved', sub.handle)).error, 0)
  t.is(fs.readFileSync(path.join(v.mnt, 'sub', 'moved'), 'utf8'), 'A')
  const noreplace = await v.call(OP.RENAME2, [v.root, sub.handle], Buffer.concat([u64(0), u32s(RENAME_NOREPLACE, 0), name('b'), name('moved')]))
  t.is(noreplace.error, -E.EEXIST)
  t.is((await rename('b', 'moved', sub.handle)).error, 0, 'replaces')
  t.is(fs.readFileSync(path.join(v.mnt, 'sub', 'moved'), 'utf8'), 'B')
  t.is((await v.call(OP.UNLINK, [sub.handle], name('moved'))).error, 0)
  t.deepEqual(fs.readdirSync(path.join(v.mnt, 'sub')), [])
  t.is((await v.call(OP.UNLINK, [sub.handle], name('moved'))).error, -E.ENOENT)
  t.is((await v.call(OP.RMDIR, [v.root], name('sub'))).error, 0)
  t.false(fs.existsSync(path.join(v.mnt, 'sub')))
  t.is((await v.call(OP.GETATTR, [sub.handle], Buffer.alloc(16))).error, -E.ESTALE, 'a removed directory is stale')
  // A file's space is free once its last name goes: nothing the server keeps holds it.
  const big = await create(t, v, v.root, 'big')
  for (let i = 0; i < 8; i++) await v.call(OP.WRITE, [big.handle], writeIn(big.fh!, i * MiB, randomBytes(MiB)))
  await v.call(OP.FSYNC, [big.handle], Buffer.concat([u64(big.fh!), u32s(0, 0)]))
  await v.call(OP.RELEASE, [big.handle], releaseIn(big.fh!))
  const bfree = async () => (await v.call(OP.STATFS, [v.root])).body.readBigUInt64LE(8)
  const before = await bfree()
  t.is((await v.call(OP.UNLINK, [v.root], name('big'))).error, 0)
  t.true((await bfree()) - before >= 2048n, '8 MiB freed')
  t.is((await v.call(OP.GETATTR, [big.handle], Buffer.alloc(16))).error, -E.ESTALE)
})

test('READDIR lists every name, across requests, from the offsets it gave', async (t) => {
  const v = await volume(t)
  const names = Array.from({ length: 60 }, (_, i) => `file-${i}-${'x'.repeat(i % 13)}`)
  fs.mkdirSync(path.join(v.mnt, 'many'))
  for (const n of names) fs.writeFileSync(path.join(v.mnt, 'many', n), n)
  fs.mkdirSync(path.join(v.mnt, 'many', 'subdir'))
  const dir = await lookup(t, v, v.root, 'many')
  const o = await v.call(OP.OPENDIR, [dir.handle], openIn(O_RDONLY))
  t.is(o.error, 0)
  t.is(o.body.readBigUInt64LE(0), 0n, 'OPENDIR fh is 0')
  const seen: Dirent[] = []
  let offset = 0n
  let rounds = 0
  for (;;) {
    const r = await v.call(OP.READDIR, [dir.handle], readIn(0n, offset, 512))
    t.is(r.error, 0)
    t.true(r.body.length <= 512)
    const batch = decodeDirents(r.body)
    if (batch.length === 0) break
    seen.push(...batch)
    offset = batch[batch.length - 1]!.off
    if (++rounds > 100) return t.fail('READDIR never ends')
  }
  t.true(rounds > 3, 'several requests')
  t.deepEqual(seen.map((d) => d.name).sort(), ['.', '..', ...names, 'subdir'].sort())
  t.is(seen.find((d) => d.name === 'subdir')?.type, 4, 'DT_DIR')
  t.is(seen.find((d) => d.name === names[0])?.type, 8, 'DT_REG')
  t.is(seen.find((d) => d.name === names[0])?.ino, fs.statSync(path.join(v.mnt, 'many', names[0]!), { bigint: true }).ino)
  t.is((await v.call(OP.RELEASEDIR, [dir.handle], releaseIn(0n))).error, 0)
})

test('a handle with another tag is refused with ESTALE', async (t) => {
  const v = await volume(t)
  const other = { ...v.root, tag: v.tag ^ 1n }
  t.is((await v.call(OP.GETATTR, [other], Buffer.alloc(16))).error, -E.ESTALE)
  t.is((await v.call(OP.MKDIR, [other], mkdirIn(0o755, 'x'))).error, -E.ESTALE)
  t.false(fs.existsSync(path.join(v.mnt, 'x')))
  const garbage = { ...v.root, bytes: Buffer.from([0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]) }
  const g = await v.call(OP.GETATTR, [garbage], Buffer.alloc(16))
  t.true(g.error === -E.ESTALE || g.error === -E.EINVAL, `a made-up handle: ${g.error}`)
})

test("names with '/', '.' or '..', empty or too long are refused and nothing is made", async (t) => {
  const v = await volume(t)
  fs.mkdirSync(path.join(v.mnt, 'inner'))
  const before = fs.readdirSync(v.mnt).sort()
  t.is((await v.call(OP.MKDIR, [v.root], mkdirIn(0o755, 'inner/evil'))).error, -E.EINVAL)
  t.is((await v.call(OP.CREATE, [v.root], createIn(O_RDWR, 0o644, '..'))).error, -E.EINVAL)
  t.is((await v.call(OP.CREATE, [v.root], createIn(O_RDWR, 0o644, '../escape'))).error, -E.EINVAL)
  t.is((await v.call(OP.LOOKUP, [v.root], name('.'))).error, -E.EINVAL)
  t.is((await v.call(OP.LOOKUP, [v.root], name('..'))).error, -E.EINVAL)
  t.is((await v.call(OP.MKDIR, [v.root], mkdirIn(0o755, ''))).error, -E.EINVAL)
  t.is((await v.call(OP.MKDIR, [v.root], mkdirIn(0o755, 'n'.repeat(256)))).error, -E.ENAMETOOLONG)
  t.is((await v.call(OP.MKDIR, [v.root], Buffer.concat([u32s(0o755, 0), Buffer.from('unterminated')]))).error, -E.EINVAL)
  const symlinkEvil = await v.call(OP.SYMLINK, [v.root], Buffer.concat([name('a/b'), name('/etc/passwd')]))
  t.is(symlinkEvil.error, -E.EINVAL)
  t.deepEqual(fs.readdirSync(v.mnt).sort(), before)
  t.deepEqual(fs.readdirSync(path.join(v.mnt, 'inner')), [])
  t.is((await v.call(OP.MKDIR, [v.root], mkdirIn(0o755, 'n'.repeat(255)))).error, 0, '255 bytes is fine')
})

test("a caller's credentials decide: EACCES in a root-owned 0755 dir, ownership in a 0777 one", async (t) => {
  const v = await volume(t)
  fs.mkdirSync(path.join(v.mnt, 'private'), { mode: 0o755 })
  fs.mkdirSync(path.join(v.mnt, 'public'))
  fs.chmodSync(path.join(v.mnt, 'public'), 0o777)
  const priv = await lookup(t, v, v.root, 'private')
  const pub = await lookup(t, v, v.root, 'public')
  const denied = await v.call(OP.CREATE, [priv.handle], createIn(O_RDWR, 0o644, 'f'), { caller: USER })
  t.is(denied.error, -E.EACCES)
  t.is((await v.call(OP.MKDIR, [priv.handle], mkdirIn(0o755, 'd'), { caller: USER })).error, -E.EACCES)
  t.deepEqual(fs.readdirSync(path.join(v.mnt, 'private')), [])
  const mine = entryOf(t, await v.call(OP.CREATE, [pub.handle], createIn(O_RDWR, 0o640, 'f'), { caller: USER }), 'create')
  const st = fs.statSync(path.join(v.mnt, 'public', 'f'))
  t.is(st.uid, 1000)
  t.is(st.gid, 1000)
  t.is(st.mode & 0o7777, 0o640, 'no umask of the server applied')
  t.is(mine.attr.uid, 1000)
  // The file is the user's; another user may not write it, nor root's 0600 file be read.
  const other: Caller = { uid: 2000, gid: 2000, groups: [] }
  t.is((await v.call(OP.OPEN, [mine.handle], openIn(O_WRONLY), { caller: other })).error, -E.EACCES)
  fs.writeFileSync(path.join(v.mnt, 'secret'), 'root only', { mode: 0o600 })
  const secret = await lookup(t, v, v.root, 'secret')
  t.is((await v.call(OP.OPEN, [secret.handle], openIn(O_RDONLY), { caller: USER })).error, -E.EACCES)
  const access = (mask: number, caller: Caller) => v.call(OP.ACCESS, [secret.handle], u32s(mask, 0), { caller })
  t.is((await access(4, USER)).error, -E.EACCES, 'ACCESS R_OK as the user')
  t.is((await access(4, ROOT)).error, 0, 'ACCESS R_OK as root')
  // Supplementary groups count.
  fs.mkdirSync(path.join(v.mnt, 'team'))
  fs.chmodSync(path.join(v.mnt, 'team'), 0o770)
  fs.chownSync(path.join(v.mnt, 'team'), 0, 3000)
  const team = await lookup(t, v, v.root, 'team')
  t.is((await v.call(OP.MKDIR, [team.handle], mkdirIn(0o755, 'x'), { caller: USER })).error, -E.EACCES)
  t.is((await v.call(OP.MKDIR, [team.handle], mkdirIn(0o755, 'x'), { caller: { ...USER, groups: [1000, 3000] } })).error, 0)
})

test('SETATTR: chmod and chown by a non-owner fail EPERM; the owner may chmod; size and times', async (t) => {
  const v = await volume(t)
  fs.writeFileSync(path.join(v.mnt, 'f'), 'some content')
  fs.chmodSync(path.join(v.mnt, 'f'), 0o644)
  const f = await lookup(t, v, v.root, 'f')
  const chmod = (mode: number, caller: Caller) => v.call(OP.SETATTR, [f.handle], setattrIn(FATTR_MODE, { mode }), { caller })
  t.is((await chmod(0o600, USER)).error, -E.EPERM)
  t.is(fs.statSync(path.join(v.mnt, 'f')).mode & 0o7777, 0o644)
  t.is((await v.call(OP.SETATTR, [f.handle], setattrIn(FATTR_UID, { uid: 1000 }), { caller: USER })).error, -E.EPERM)
  t.is((await v.call(OP.SETATTR, [f.handle], setattrIn(FATTR_UID, { uid: 1000 }))).error, 0, 'root may chown')
  const r = await chmod(0o600, USER)
  t.is(r.error, 0, 'now the owner')
  t.is(decodeAttr(r.body, 16).mode & 0o7777, 0o600)
  t.is(fs.statSync(path.join(v.mnt, 'f')).mode & 0o7777, 0o600)
  const trunc = await v.call(OP.SETATTR, [f.handle], setattrIn(FATTR_SIZE, { size: 4 }), { caller: USER })
  t.is(trunc.error, 0)
  t.is(fs.readFileSync(path.join(v.mnt, 'f'), 'utf8'), 'some')
  const when = 1_500_000_000
  t.is((await v.call(OP.SETATTR, [f.handle], setattrIn(FATTR_MTIME, { mtime: when }), { caller: USER })).error, 0)
  t.is(Math.floor(fs.statSync(path.join(v.mnt, 'f')).mtimeMs / 1000), when)
  t.is((await v.call(OP.SETATTR, [f.handle], setattrIn(FATTR_SIZE, { size: 0 }), { caller: { uid: 2000, gid: 2000, groups: [] } })).error, -E.EACCES)
})

test('symlinks, hard links, STATFS and user xattrs', async (t) => {
  const v = await volume(t)
  fs.writeFileSync(path.join(v.mnt, 'target'), 'data')
  const link = entryOf(t, await v.call(OP.SYMLINK, [v.root], Buffer.concat([name('ln'), name('/etc/passwd')])), 'symlink')
  t.is(fs.readlinkSync(path.join(v.mnt, 'ln')), '/etc/passwd')
  t.is(link.attr.mode & 0o170000, 0o120000, 'the link itself, not followed')
  const rl = await v.call(OP.READLINK, [link.handle])
  t.is(rl.body.toString(), '/etc/passwd')
  // Opening a symlink's handle never follows it.
  t.is((await v.call(OP.OPEN, [link.handle], openIn(O_RDONLY))).error, -E.ELOOP)
  const target = await lookup(t, v, v.root, 'target')
  const hard = entryOf(t, await v.call(OP.LINK, [v.root, target.handle], Buffer.concat([u64(0), name('hard')])), 'link')
  t.true(hard.handle.bytes.equals(target.handle.bytes))
  t.is(hard.attr.nlink, 2)
  t.is(fs.readFileSync(path.join(v.mnt, 'hard'), 'utf8'), 'data')
  const sf = await v.call(OP.STATFS, [v.root])
  t.is(sf.error, 0)
  t.is(sf.body.length, 80)
  t.true(sf.body.readBigUInt64LE(0) > 0n, 'blocks')
  t.is(sf.body.readUInt32LE(44), 255, 'namelen')
  const setx = await v.call(OP.SETXATTR, [target.handle], Buffer.concat([u32s(5, 0), name('user.color'), Buffer.from('green')]))
  t.is(setx.error, 0)
  const size = await v.call(OP.GETXATTR, [target.handle], Buffer.concat([u32s(0, 0), name('user.color')]))
  t.is(size.body.readUInt32LE(0), 5)
  const val = await v.call(OP.GETXATTR, [target.handle], Buffer.concat([u32s(64, 0), name('user.color')]))
  t.is(val.body.toString(), 'green')
  const list = await v.call(OP.LISTXATTR, [target.handle], u32s(256, 0))
  t.true(list.body.toString().split('\0').includes('user.color'))
  const cap = await v.call(OP.GETXATTR, [target.handle], Buffer.concat([u32s(64, 0), name('security.capability')]))
  t.true(cap.error === -E.ENODATA || cap.error === -E.EOPNOTSUPP)
  t.is((await v.call(OP.REMOVEXATTR, [target.handle], name('user.color'))).error, 0)
  const setcap = await v.call(OP.SETXATTR, [target.handle], Buffer.concat([u32s(4, 0), name('trusted.x'), Buffer.from('evil')]), { caller: USER })
  t.is(setcap.error, -E.EPERM, 'no capabilities for a user')
})

test('MKNOD makes fifos for anyone and devices only for root; FALLOCATE and LSEEK work on an fh', async (t) => {
  const v = await volume(t)
  fs.chmodSync(v.mnt, 0o777)
  const mknod = (mode: number, rdev: number, file: string, caller: Caller) =>
    v.call(OP.MKNOD, [v.root], Buffer.concat([u32s(mode, rdev, 0, 0), name(file)]), { caller })
  const fifo = entryOf(t, await mknod(0o010644, 0, 'fifo', USER), 'mknod fifo')
  t.is(fifo.attr.mode, 0o010644)
  t.true(fs.statSync(path.join(v.mnt, 'fifo')).isFIFO())
  t.is((await v.call(OP.OPEN, [fifo.handle], openIn(O_RDONLY))).error, -E.ENXIO, 'a fifo is not opened on the server')
  const nullDev = (1 << 8) | 3 // 1:3 in the kernel's encoding
  t.is((await mknod(0o020600, nullDev, 'dev', USER)).error, -E.EPERM, 'no CAP_MKNOD for a user')
  const dev = entryOf(t, await mknod(0o020600, nullDev, 'dev', ROOT), 'mknod dev')
  t.is(dev.attr.mode, 0o020600)
  const st = fs.statSync(path.join(v.mnt, 'dev'))
  t.true(st.isCharacterDevice())
  t.is(st.rdev, fs.statSync('/dev/null').rdev)
  t.is((await mknod(0o140644, 0, 'odd', ROOT)).error, 0, 'a socket node')
  t.is((await mknod(0o040755, 0, 'notadir', ROOT)).error, -E.EINVAL)

  const f = await create(t, v, v.root, 'sparse', O_RDWR)
  const fallocate = Buffer.concat([u64(f.fh!), u64(MiB), u64(64 * 1024), u32s(0, 0)])
  t.is((await v.call(OP.FALLOCATE, [f.handle], fallocate)).error, 0)
  t.is(fs.statSync(path.join(v.mnt, 'sparse')).size, MiB + 64 * 1024)
  t.is((await v.call(OP.WRITE, [f.handle], writeIn(f.fh!, 2 * MiB, Buffer.alloc(4096, 7)))).error, 0)
  const lseek = (offset: number, whence: number) => v.call(OP.LSEEK, [f.handle], Buffer.concat([u64(f.fh!), u64(offset), u32s(whence, 0)]))
  const data = await lseek(0, 3)
  t.is(data.error, 0)
  t.is(Number(data.body.readBigUInt64LE(0)), 2 * MiB, 'SEEK_DATA skips the hole and the unwritten extent')
  const hole = await lseek(2 * MiB, 4)
  t.is(Number(hole.body.readBigUInt64LE(0)), 2 * MiB + 4096, 'SEEK_HOLE')
  t.is((await lseek(0, 0)).error, -E.EINVAL, 'SEEK_SET is the kernel\'s own')
  const lnk = entryOf(t, await v.call(OP.SYMLINK, [v.root], Buffer.concat([name('l'), name('sparse')])), 'symlink')
  t.is((await v.call(OP.GETXATTR, [lnk.handle], Buffer.concat([u32s(0, 0), name('user.x')]))).error, -E.EOPNOTSUPP)
})

test('requests in parallel on many files, with drops, keep every file whole', async (t) => {
  const v = await volume(t)
  const dir = entryOf(t, await v.call(OP.MKDIR, [v.root], mkdirIn(0o777, 'par')), 'mkdir')
  const contents = new Map<string, Buffer>()
  await Promise.all(
    Array.from({ length: 40 }, async (_, i) => {
      const client = 1 + (i % 5)
      const file = `f${i}`
      const e = entryOf(t, await v.call(OP.CREATE, [dir.handle], createIn(O_RDWR, 0o644, file), { client, caller: USER }), file)
      const body = randomBytes(64 * 1024 + i * 1000)
      contents.set(file, body)
      const writes = []
      for (let at = 0; at < body.length; at += 16384) {
        writes.push(v.call(OP.WRITE, [e.handle], writeIn(e.fh!, at, body.subarray(at, at + 16384)), { client }))
      }
      for (const w of await Promise.all(writes)) t.is(w.error, 0)
      if (i % 7 === 0) native.shareServerDropClient(v.h, client)
      const r = await v.call(OP.READ, [e.handle], readIn(e.fh!, 0, body.length), { client })
      t.true(r.body.equals(body), `${file} read back`)
      if (i % 3 === 0) t.is((await v.call(OP.UNLINK, [dir.handle], name(file), { caller: USER })).error, 0)
      else t.is((await v.call(OP.RELEASE, [e.handle], releaseIn(e.fh!), { client })).error, 0)
    }),
  )
  for (const [file, body] of contents) {
    const p = path.join(v.mnt, 'par', file)
    if (Number(file.slice(1)) % 3 === 0) t.false(fs.existsSync(p))
    else t.true(fs.readFileSync(p).equals(body), file)
  }
})

test('O_APPEND writes through two clients\' opens all land whole, none overwritten', async (t) => {
  const v = await volume(t)
  fs.writeFileSync(path.join(v.mnt, 'log'), '')
  fs.chmodSync(path.join(v.mnt, 'log'), 0o666)
  const log = await lookup(t, v, v.root, 'log')
  const fh1 = await open(t, v, log.handle, O_WRONLY | O_APPEND, 1)
  const fh2 = await open(t, v, log.handle, O_RDWR | O_APPEND, 2)
  t.is(fh1, BigInt(O_WRONLY | O_APPEND))
  const records: Buffer[] = []
  const writes: Promise<Reply>[] = []
  for (let i = 0; i < 200; i++) {
    const rec = Buffer.from(`${String(i).padStart(4, '0')}:${'r'.repeat(500 + (i % 7) * 100)}\n`)
    records.push(rec)
    const client = i % 2 === 0 ? 1 : 2
    writes.push(v.call(OP.WRITE, [log.handle], writeIn(client === 1 ? fh1 : fh2, 0, rec), { client, caller: USER }))
  }
  const replies = await Promise.all(writes)
  t.true(replies.every((r) => r.error === 0))
  const content = fs.readFileSync(path.join(v.mnt, 'log'), 'utf8')
  const total = records.reduce((n, r) => n + r.length, 0)
  t.is(content.length, total)
  const lines = content.split('\n').slice(0, -1).map((l) => `${l}\n`).sort()
  t.deepEqual(lines, records.map((r) => r.toString()).sort())
})

test('locks: a write lock of client 1 blocks client 2 (EAGAIN, would-block) until client 1 is dropped', async (t) => {
  const v = await volume(t)
  fs.writeFileSync(path.join(v.mnt, 'lockme'), 'x')
  const f = await lookup(t, v, v.root, 'lockme')
  const fh1 = await open(t, v, f.handle, O_RDWR, 1)
  const fh2 = await open(t, v, f.handle, O_RDWR, 2)
  const setlk = (client: number, owner: bigint, type: number, op: number = OP.SETLK, fh = client === 1 ? fh1 : fh2) =>
    v.call(op, [f.handle], lkIn(fh, owner, type), { client })
  t.is((await setlk(1, 111n, F_WRLCK)).error, 0)
  t.is((await setlk(1, 111n, F_WRLCK)).error, 0, 'again by its owner')
  t.is((await setlk(2, 222n, F_RDLCK)).error, -E.EAGAIN)
  const w = await setlk(2, 222n, F_WRLCK, OP.SETLKW)
  t.is(w.error, -E.EAGAIN)
  t.is(w.flags, kReplyWouldBlock)
  const g = await v.call(OP.GETLK, [f.handle], lkIn(fh2, 222n, F_WRLCK), { client: 2 })
  t.is(g.error, 0)
  t.is(g.body.readUInt32LE(16), F_WRLCK)
  t.is(g.body.readBigUInt64LE(0), 0n)
  t.is(g.body.readBigUInt64LE(8), INT64_MAX)
  t.is(g.body.readUInt32LE(20), 0, 'pid 0')
  // Another owner of client 1 conflicts too: owners are separate, as processes are.
  t.is((await setlk(1, 112n, F_WRLCK)).error, -E.EAGAIN)
  native.shareServerDropClient(v.h, 1)
  t.is((await setlk(2, 222n, F_WRLCK, OP.SETLKW)).error, 0, 'free after the drop')
  const free = await v.call(OP.GETLK, [f.handle], lkIn(fh2, 222n, F_WRLCK), { client: 2 })
  t.is(free.body.readUInt32LE(16), F_UNLCK, 'no conflict with its own lock')
  // FLUSH by the owner releases its POSIX locks.
  t.is((await v.call(OP.FLUSH, [f.handle], flushIn(fh2, 222n), { client: 2 })).error, 0)
  t.is((await setlk(3, 333n, F_WRLCK, OP.SETLK, fh2)).error, 0, 'free after the flush')
  t.is((await setlk(3, 333n, F_UNLCK, OP.SETLK, fh2)).error, 0)
  // flock: released by RELEASE with FUSE_RELEASE_FLOCK_UNLOCK.
  const flock = (client: number, owner: bigint, type: number) =>
    v.call(OP.SETLK, [f.handle], lkIn(client === 1 ? fh1 : fh2, owner, type, 0n, INT64_MAX, FUSE_LK_FLOCK), { client })
  t.is((await flock(1, 7n, F_WRLCK)).error, 0)
  t.is((await flock(2, 8n, F_WRLCK)).error, -E.EAGAIN)
  t.is((await v.call(OP.RELEASE, [f.handle], releaseIn(fh1, FUSE_RELEASE_FLOCK_UNLOCK, 7n), { client: 1 })).error, 0)
  t.is((await flock(2, 8n, F_WRLCK)).error, 0)
})

test('handles outlive the server: close, open again, and an old handle and fh still work', async (t) => {
  const v = await volume(t)
  const f = await create(t, v, v.root, 'persist', O_RDWR)
  t.is((await v.call(OP.WRITE, [f.handle], writeIn(f.fh!, 0, Buffer.from('kept')))).error, 0)
  const old = v.h
  await v.reopen()
  t.is(native.shareServerStats(old).openFds, 0, 'the closed server holds no descriptor')
  const late = await new Promise<Reply>((resolve) => native.shareServerExec(old, 1, request(OP.ROOT, []), (b) => resolve(decodeReply(b))))
  t.is(late.error, -E.ENOTCONN)
  await closeServer(old)  // idempotent, and calls back
  const g = await v.call(OP.GETATTR, [f.handle], Buffer.alloc(16))
  t.is(g.error, 0)
  t.is(decodeAttr(g.body, 16).size, 4)
  const r = await v.call(OP.READ, [f.handle], readIn(f.fh!, 0, 100))
  t.is(r.error, 0, 'the fh reopens on the new server')
  t.is(r.body.toString(), 'kept')
  t.is((await v.call(OP.RELEASE, [f.handle], releaseIn(f.fh!))).error, 0)
})

test('shareServerOpen serves only a whole file system: not a directory in it, nor a bind mount of one', async (t) => {
  const v = await volume(t)
  fs.mkdirSync(path.join(v.mnt, 'inner'))
  const inner = t.throws(() => native.shareServerOpen(path.join(v.mnt, 'inner'), v.tagHex, 1))
  t.is((inner as Error & { code?: string }).code, 'EINVAL')
  const bind = fs.mkdtempSync(path.join(os.tmpdir(), 'pxd-share-bind-'))
  run('mount', ['--bind', path.join(v.mnt, 'inner'), bind])
  t.teardown(() => {
    execFileSync('umount', [bind], { stdio: 'ignore' })
    fs.rmdirSync(bind)
  })
  const bound = t.throws(() => native.shareServerOpen(bind, v.tagHex, 1))
  t.is((bound as Error & { code?: string }).code, 'EINVAL')
  t.regex((bound as Error).message, /mounts \/inner of its file system/)
  const file = t.throws(() => native.shareServerOpen(path.join(v.mnt, 'lost+found', 'nope'), v.tagHex, 1))
  t.is((file as Error & { code?: string }).code, 'ENOENT')
})

test('malformed requests get error replies, and the server keeps serving', async (t) => {
  const v = await volume(t)
  const good = request(OP.GETATTR, [v.root], Buffer.alloc(16))
  const cases: Array<[string, Buffer, number]> = [
    ['empty', Buffer.alloc(0), -E.EPROTO],
    ['truncated header', good.subarray(0, 20), -E.EPROTO],
    ['body_len past the end', request(OP.GETATTR, [v.root], Buffer.alloc(16), { bodyLen: 4096 }), -E.EPROTO],
    ['trailing bytes', Buffer.concat([good, Buffer.alloc(8)]), -E.EPROTO],
    ['nhandles 3', request(OP.GETATTR, [v.root, v.root, v.root], Buffer.alloc(16)), -E.EINVAL],
    ['a 200-byte handle', request(OP.GETATTR, [{ ...v.root, bytes: Buffer.alloc(200, 1) }], Buffer.alloc(16)), -E.EINVAL],
    ['a handle cut short', good.subarray(0, 40), -E.EPROTO],
    ['no handle', request(OP.GETATTR, [], Buffer.alloc(16)), -E.EINVAL],
    ['two handles for GETATTR', request(OP.GETATTR, [v.root, v.root], Buffer.alloc(16)), -E.EINVAL],
    ['an unknown opcode', request(9999, [v.root]), -E.ENOSYS],
    ['INTERRUPT', request(OP.INTERRUPT, [v.root], u64(1)), -E.ENOSYS],
    ['uid -1', request(OP.MKDIR, [v.root], mkdirIn(0o755, 'u'), { caller: { uid: 0xffffffff, gid: 0, groups: [] } }), -E.EINVAL],
    ['a short body', request(OP.READ, [v.root], Buffer.alloc(10)), -E.EINVAL],
    ['a made-up fh', request(OP.READ, [v.root], readIn(0xdeadbeefn, 0, 10)), -E.EINVAL],
    ['READ of a directory', request(OP.READ, [v.root], readIn(0n, 0, 10)), -E.EISDIR],
    ['WRITE data missing', request(OP.WRITE, [v.root], writeIn(1n, 0, Buffer.alloc(100)).subarray(0, 50)), -E.EINVAL],
    ['a lock range backwards', request(OP.SETLK, [v.root], lkIn(0n, 1n, F_WRLCK, 10n, 5n)), -E.EINVAL],
  ]
  // 33 groups: more than kMaxGroups.
  const many = request(OP.GETATTR, [v.root], Buffer.alloc(16), { caller: { uid: 1, gid: 1, groups: Array.from({ length: 33 }, (_, i) => i) } })
  cases.push(['33 groups', many, -E.EINVAL])
  for (const [what, req, want] of cases) {
    const r = await v.exec(1, req)
    t.is(r.error, want, what)
    t.is(r.body.length, 0, what)
  }
  t.false(fs.existsSync(path.join(v.mnt, 'u')))
  const flags = request(OP.GETATTR, [v.root], Buffer.alloc(16))
  flags.writeUInt8(1, 19)
  t.is((await v.exec(1, flags)).error, -E.EINVAL, 'flags must be 0')
  const ok = await v.exec(1, good)
  t.is(ok.error, 0, 'still serving')
})

test('shareServerOpen refuses what it cannot serve, with a code', (t) => {
  const missing = t.throws(() => native.shareServerOpen('/nonexistent/pxd-share', '0123456789abcdef', 1))
  t.is((missing as Error & { code?: string }).code, 'ENOENT')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pxd-share-open-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const badTag = t.throws(() => native.shareServerOpen(dir, 'xyz', 1))
  t.is((badTag as Error & { code?: string }).code, 'EINVAL')
  const threads = t.throws(() => native.shareServerOpen(dir, '0123456789abcdef', 17))
  t.is((threads as Error & { code?: string }).code, 'EINVAL')
  // A directory inside a file system is not its root: handles would reach outside it.
  const sub = t.throws(() => native.shareServerOpen(dir, '0123456789abcdef', 1))
  t.is((sub as Error & { code?: string }).code, 'EINVAL')
  t.throws(() => native.shareServerExec({} as ShareServerHandle, 1, Buffer.alloc(0), () => {}), { instanceOf: TypeError })
})
