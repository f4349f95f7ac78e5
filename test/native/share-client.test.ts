/**
 * The shared-volume FUSE client (native/share_client.h) against a tiny fake server written here:
 * a map of handles to in-memory files that parses the wire requests (native/share_wire.h) the
 * client builds and answers with wire replies. File I/O runs in child processes, since this
 * process's JS thread is the one serving the requests.
 *
 * Needs root and /dev/fuse: the test fails (never skips) without them.
 */
import { execFile, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import test, { type ExecutionContext } from 'ava'
import { native } from '../../src/native/binding'
import {
  ShareClientEvent,
  type ShareClientHandle,
  type ShareClientLayout,
  type ShareClientMountOptions,
} from '../../src/native/share-client-binding'

const MiB = 1 << 20
const TAG = 0x7078645f74657374n
const HANDLE_TYPE = 1

const OP = {
  LOOKUP: 1, GETATTR: 3, SETATTR: 4, MKDIR: 9, UNLINK: 10, RMDIR: 11, LINK: 13, OPEN: 14, READ: 15,
  WRITE: 16, STATFS: 17, RELEASE: 18, GETXATTR: 22, FLUSH: 25, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29,
  CREATE: 35,
} as const
const E = { ENOENT: 2, EINTR: 4, EIO: 5, EEXIST: 17, ENOTDIR: 20, ENOSYS: 38, ENOTEMPTY: 39, ENODATA: 61, ESTALE: 116, ENOTCONN: 107 }
const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const O_TRUNC = 0o1000

// ---- the wire format ----

interface WireRequest {
  opcode: number
  uid: number
  gid: number
  pid: number
  groups: number[]
  handles: Uint8Array[]
  body: Uint8Array
}

const pad8 = (n: number): number => (n + 7) & ~7

function parseRequest(memory: ArrayBuffer, offset: number, length: number): WireRequest {
  const dv = new DataView(memory, offset, length)
  const ngroups = dv.getUint16(16, true)
  const nhandles = dv.getUint8(18)
  if (dv.getUint8(19) !== 0 || dv.getBigUint64(24, true) !== 0n) throw new Error('flags and reserved must be 0')
  if (ngroups > 32 || nhandles > 2) throw new Error(`ngroups ${ngroups}, nhandles ${nhandles}`)
  const groups: number[] = []
  for (let i = 0; i < ngroups; i++) groups.push(dv.getUint32(32 + 4 * i, true))
  let at = 32 + pad8(4 * ngroups)
  const handles: Uint8Array[] = []
  for (let i = 0; i < nhandles; i++) {
    const bytes = dv.getUint32(at + 12, true)
    const size = 16 + pad8(bytes)
    handles.push(new Uint8Array(memory, offset + at, size))
    at += size
  }
  const bodyLen = dv.getUint32(20, true)
  if (at + bodyLen !== length) throw new Error(`wire request of ${length} bytes holds ${at + bodyLen}`)
  return {
    opcode: dv.getUint32(0, true),
    uid: dv.getUint32(4, true),
    gid: dv.getUint32(8, true),
    pid: dv.getUint32(12, true),
    groups,
    handles,
    body: new Uint8Array(memory, offset + at, bodyLen),
  }
}

function wireHandle(ino: number): Uint8Array {
  const h = new Uint8Array(24)
  const dv = new DataView(h.buffer)
  dv.setBigUint64(0, TAG, true)
  dv.setInt32(8, HANDLE_TYPE, true)
  dv.setUint32(12, 8, true)
  dv.setBigUint64(16, BigInt(ino), true)
  return h
}

/** WireReply | handle | body, into `into` (at its start) or a new buffer. */
function wireReply(error: number, body: Uint8Array = new Uint8Array(0), handle?: Uint8Array, into?: Uint8Array): Uint8Array {
  const len = 16 + (handle?.length ?? 0) + body.length
  const out = into ? into.subarray(0, len) : new Uint8Array(len)
  const dv = new DataView(out.buffer, out.byteOffset, 16)
  dv.setInt32(0, error, true)
  dv.setUint32(4, body.length, true)
  dv.setUint8(8, handle ? 1 : 0)
  dv.setUint8(9, 0)
  if (handle) out.set(handle, 16)
  out.set(body, 16 + (handle?.length ?? 0))
  return out
}

function cString(bytes: Uint8Array, from = 0): string {
  const end = bytes.indexOf(0, from)
  return Buffer.from(bytes.buffer, bytes.byteOffset + from, (end < 0 ? bytes.length : end) - from).toString()
}

// ---- the fake server ----

interface Inode {
  ino: number
  mode: number
  nlink: number
  data: Buffer
  entries?: Map<string, number>
}

class FakeServer {
  inodes = new Map<number, Inode>()
  nextIno = 100
  lookups = new Map<string, number>()
  /** Every request, copied out of the slot (bodies cut at 4 KiB; bodyLength tells the whole). */
  seen: (WireRequest & { bodyLength: number })[] = []
  /** Called for a LOOKUP of `name` instead of answering it: return true when taken care of. */
  hooks = new Map<string, (slot: number, req: WireRequest) => void>()

  constructor() {
    this.inodes.set(1, { ino: 1, mode: S_IFDIR | 0o755, nlink: 2, data: Buffer.alloc(0), entries: new Map() })
  }

  get root(): Inode {
    return this.inodes.get(1)!
  }

  inodeOf(handle: Uint8Array | undefined): Inode | undefined {
    if (!handle) return undefined
    const dv = new DataView(handle.buffer, handle.byteOffset, handle.length)
    if (dv.getBigUint64(0, true) !== TAG || dv.getInt32(8, true) !== HANDLE_TYPE || dv.getUint32(12, true) !== 8) return undefined
    return this.inodes.get(Number(dv.getBigUint64(16, true)))
  }

  attr(n: Inode): Uint8Array {
    const a = new Uint8Array(88)
    const dv = new DataView(a.buffer)
    dv.setBigUint64(0, BigInt(n.ino), true)
    dv.setBigUint64(8, BigInt(n.data.length), true)
    dv.setBigUint64(16, BigInt(Math.ceil(n.data.length / 512)), true)
    for (const at of [24, 32, 40]) dv.setBigUint64(at, 1_700_000_000n, true)
    dv.setUint32(60, n.mode, true)
    dv.setUint32(64, n.nlink, true)
    dv.setUint32(80, 4096, true)
    return a
  }

  attrOut(n: Inode): Uint8Array {
    const out = new Uint8Array(104)
    new DataView(out.buffer).setBigUint64(0, 1n, true) // the client sets its own timeout
    out.set(this.attr(n), 16)
    return out
  }

  entryOut(n: Inode): Uint8Array {
    const out = new Uint8Array(128)
    out.set(this.attr(n), 40)
    return out
  }

  openOut(fh: number): Uint8Array {
    const out = new Uint8Array(16)
    const dv = new DataView(out.buffer)
    dv.setBigUint64(0, BigInt(fh), true)
    dv.setUint32(8, 2, true) // FOPEN_KEEP_CACHE: the client must drop it
    return out
  }

  add(parent: Inode, name: string, mode: number): Inode {
    const n: Inode = { ino: this.nextIno++, mode, nlink: 1, data: Buffer.alloc(0) }
    if ((mode & S_IFDIR) !== 0) {
      n.entries = new Map()
      n.nlink = 2
      parent.nlink++
    }
    this.inodes.set(n.ino, n)
    parent.entries!.set(name, n.ino)
    return n
  }

  /** The wire reply for a request, or undefined when a hook took it. */
  serve(slot: number, req: WireRequest, slotMemory: Uint8Array): Uint8Array | undefined {
    this.seen.push({
      ...req,
      handles: req.handles.map((h) => h.slice()),
      body: req.body.slice(0, 4096),
      bodyLength: req.body.length,
    })
    const node = this.inodeOf(req.handles[0])
    if (!node) return wireReply(-E.ESTALE)
    const body = Buffer.from(req.body.buffer, req.body.byteOffset, req.body.length)
    const entry = (n: Inode, extra?: Uint8Array): Uint8Array => {
      const b = extra ? Buffer.concat([this.entryOut(n), extra]) : this.entryOut(n)
      return wireReply(0, b, wireHandle(n.ino))
    }
    switch (req.opcode) {
      case OP.LOOKUP: {
        const name = cString(req.body)
        const hook = this.hooks.get(name)
        if (hook) {
          hook(slot, req)
          return undefined
        }
        this.lookups.set(name, (this.lookups.get(name) ?? 0) + 1)
        if (!node.entries) return wireReply(-E.ENOTDIR)
        const ino = node.entries.get(name)
        return ino === undefined ? wireReply(-E.ENOENT) : entry(this.inodes.get(ino)!)
      }
      case OP.GETATTR:
        return wireReply(0, this.attrOut(node))
      case OP.SETATTR: {
        const valid = body.readUInt32LE(0)
        if (valid & (1 << 3)) node.data = Buffer.concat([node.data, Buffer.alloc(Number(body.readBigUInt64LE(16)))]).subarray(0, Number(body.readBigUInt64LE(16)))
        if (valid & 1) node.mode = (node.mode & ~0o7777) | (body.readUInt32LE(68) & 0o7777)
        return wireReply(0, this.attrOut(node))
      }
      case OP.CREATE: {
        const name = cString(req.body, 16)
        if (node.entries!.has(name)) return wireReply(-E.EEXIST)
        const n = this.add(node, name, S_IFREG | (body.readUInt32LE(4) & 0o7777 & ~body.readUInt32LE(8)))
        return entry(n, this.openOut(body.readUInt32LE(0) & 0o3))
      }
      case OP.MKDIR: {
        const name = cString(req.body, 8)
        if (node.entries!.has(name)) return wireReply(-E.EEXIST)
        return entry(this.add(node, name, S_IFDIR | (body.readUInt32LE(0) & 0o7777 & ~body.readUInt32LE(4))))
      }
      case OP.LINK: {
        const old = this.inodeOf(req.handles[1])
        if (!old) return wireReply(-E.ESTALE)
        node.entries!.set(cString(req.body, 8), old.ino)
        old.nlink++
        return entry(old)
      }
      case OP.UNLINK:
      case OP.RMDIR: {
        const name = cString(req.body)
        const ino = node.entries?.get(name)
        if (ino === undefined) return wireReply(-E.ENOENT)
        const child = this.inodes.get(ino)!
        if (req.opcode === OP.RMDIR && child.entries!.size > 0) return wireReply(-E.ENOTEMPTY)
        node.entries!.delete(name)
        child.nlink--
        if (req.opcode === OP.RMDIR) node.nlink--
        return wireReply(0)
      }
      case OP.OPEN: {
        const flags = body.readUInt32LE(0)
        if (flags & O_TRUNC) node.data = Buffer.alloc(0)
        return wireReply(0, this.openOut(flags & 0o3))
      }
      case OP.OPENDIR:
        return wireReply(0, this.openOut(0))
      case OP.READ: {
        const offset = Number(body.readBigUInt64LE(8))
        const size = body.readUInt32LE(16)
        const data = node.data.subarray(Math.min(offset, node.data.length), Math.min(offset + size, node.data.length))
        // The reply is built in the slot itself, over the request, as a peer link would receive it.
        return wireReply(0, data, undefined, slotMemory)
      }
      case OP.WRITE: {
        const offset = Number(body.readBigUInt64LE(8))
        const size = body.readUInt32LE(16)
        const data = body.subarray(40, 40 + size)
        if (node.data.length < offset + size) node.data = Buffer.concat([node.data, Buffer.alloc(offset + size - node.data.length)])
        data.copy(node.data, offset)
        const out = Buffer.alloc(8)
        out.writeUInt32LE(size, 0)
        return wireReply(0, out)
      }
      case OP.READDIR: {
        if (!node.entries) return wireReply(-E.ENOTDIR)
        const offset = Number(body.readBigUInt64LE(8))
        const size = body.readUInt32LE(16)
        const all: [string, number][] = [['.', node.ino], ['..', 1], ...node.entries]
        const parts: Buffer[] = []
        let used = 0
        for (let i = offset; i < all.length; i++) {
          const [name, ino] = all[i]!
          const rec = Buffer.alloc(pad8(24 + Buffer.byteLength(name)))
          if (used + rec.length > size) break
          rec.writeBigUInt64LE(BigInt(ino), 0)
          rec.writeBigUInt64LE(BigInt(i + 1), 8)
          rec.writeUInt32LE(Buffer.byteLength(name), 16)
          rec.writeUInt32LE((this.inodes.get(ino)!.mode >> 12) & 15, 20)
          rec.write(name, 24)
          parts.push(rec)
          used += rec.length
        }
        return wireReply(0, Buffer.concat(parts))
      }
      case OP.STATFS: {
        const st = Buffer.alloc(80)
        st.writeBigUInt64LE(1000n, 0) // blocks
        st.writeBigUInt64LE(600n, 8) // bfree
        st.writeBigUInt64LE(500n, 16) // bavail
        st.writeBigUInt64LE(100n, 24) // files
        st.writeBigUInt64LE(50n, 32) // ffree
        st.writeUInt32LE(4096, 40) // bsize
        st.writeUInt32LE(255, 44) // namelen
        st.writeUInt32LE(4096, 48) // frsize
        return wireReply(0, st)
      }
      case OP.RELEASE:
      case OP.RELEASEDIR:
      case OP.FLUSH:
        return wireReply(0)
      case OP.GETXATTR:
        return wireReply(-E.ENODATA)
      default:
        return wireReply(-E.ENOSYS)
    }
  }
}

// ---- mounting ----

interface Mounted {
  dir: string
  handle: ShareClientHandle
  layout: ShareClientLayout
  server: FakeServer
  events: { event: ShareClientEvent; slot: number; offset: number; length: number }[]
  stopped: Promise<number>
}

function checkPrerequisites(t: ExecutionContext): boolean {
  if (!fs.existsSync('/dev/fuse')) {
    t.fail('/dev/fuse is missing: this test needs the FUSE device (modprobe fuse, or run the container with --device /dev/fuse)')
    return false
  }
  if (process.getuid?.() !== 0) {
    t.fail('this test mounts a FUSE file system and must run as root')
    return false
  }
  return true
}

function mountsAt(dir: string): string[] {
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.split(' ')[1] === dir)
}

function mount(t: ExecutionContext, options: Partial<ShareClientMountOptions> = {}): Mounted {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pxd-share-client-'))
  const server = new FakeServer()
  const events: Mounted['events'] = []
  let onStopped!: (errno: number) => void
  const stopped = new Promise<number>((resolve) => (onStopped = resolve))
  const m = { dir, server, events, stopped } as Mounted
  const handle = native.shareClientMount(
    dir,
    wireHandle(1),
    server.attrOut(server.root),
    { fsname: 'pxd:test', ...options },
    (event, slot, offset, length) => {
      events.push({ event, slot, offset, length })
      if (event === ShareClientEvent.Stopped) return onStopped(length)
      if (event !== ShareClientEvent.Request) return
      const slotMemory = new Uint8Array(m.layout.memory, slot * m.layout.slotBytes, m.layout.slotBytes)
      let reply: Uint8Array | undefined
      try {
        reply = server.serve(slot, parseRequest(m.layout.memory, offset, length), slotMemory)
      } catch (err) {
        t.log(`bad wire request: ${String(err)}`)
        reply = wireReply(-E.EIO)
      }
      if (reply) native.shareClientReply(m.handle, slot, reply)
    },
  )
  m.handle = handle
  m.layout = native.shareClientLayout(handle)
  t.teardown(() => {
    try {
      native.shareClientUnmount(handle, true)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
  return m
}

interface Run {
  code: number | null
  signal: string | null
  stdout: string
  stderr: string
}

function run(file: string, args: string[], started?: (child: ChildProcess) => void): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { timeout: 30_000, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string; signal?: string }) | null
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, signal: e?.signal ?? null, stdout, stderr })
    })
    started?.(child)
  })
}

/** Runs `script` in a child node with the mountpoint as process.argv[1]; parses its JSON output. */
async function node<T>(t: ExecutionContext, dir: string, script: string): Promise<T> {
  const r = await run(process.execPath, ['-e', script, dir])
  if (r.code !== 0) t.log(r.stderr)
  t.is(r.code, 0, r.stderr)
  return JSON.parse(r.stdout) as T
}

function pattern(size: number): Buffer {
  const b = Buffer.alloc(size)
  for (let i = 0; i < size; i++) b[i] = (Math.imul(i, 2654435761) >>> 24) & 255
  return b
}

// ---- tests ----

test.serial('files, directories and 1 MiB of data go through the wire and back', async (t) => {
  if (!checkPrerequisites(t)) return
  const m = mount(t)
  t.is(mountsAt(m.dir).length, 1)
  t.regex(mountsAt(m.dir)[0]!, /^pxd:test \S+ fuse\.pxd-shared rw,nosuid,nodev,/)

  const out = await node<{
    equal: boolean; size: number; ino: number; smallSize: number; ls: string[]; lsDir: string[]
    rootMode: number; blocks: number; bsize: number; xattr: string
  }>(t, m.dir, `
    const fs = require('fs'), path = require('path')
    const mnt = process.argv[1]
    const data = Buffer.alloc(${MiB})
    for (let i = 0; i < data.length; i++) data[i] = (Math.imul(i, 2654435761) >>> 24) & 255
    fs.writeFileSync(path.join(mnt, 'big'), data)
    const back = fs.readFileSync(path.join(mnt, 'big'))
    fs.mkdirSync(path.join(mnt, 'dir'))
    fs.writeFileSync(path.join(mnt, 'dir', 'small'), 'hello')
    fs.writeFileSync(path.join(mnt, 'gone'), 'x')
    fs.unlinkSync(path.join(mnt, 'gone'))
    const st = fs.statSync(path.join(mnt, 'big'))
    const sfs = fs.statfsSync(mnt)
    let xattr = 'none'
    try { require('child_process').execFileSync('getfattr', ['-n', 'user.x', path.join(mnt, 'big')], { stdio: 'pipe' }) } catch (e) { xattr = String(e.stderr) }
    console.log(JSON.stringify({
      equal: back.equals(data), size: st.size, ino: st.ino, smallSize: fs.statSync(path.join(mnt, 'dir', 'small')).size,
      ls: fs.readdirSync(mnt).sort(), lsDir: fs.readdirSync(path.join(mnt, 'dir')), rootMode: fs.statSync(mnt).mode,
      blocks: sfs.blocks, bsize: sfs.bsize, xattr,
    }))
  `)
  t.true(out.equal, 'the 1 MiB read back is what was written')
  t.is(out.size, MiB)
  t.deepEqual(out.ls, ['big', 'dir'])
  t.deepEqual(out.lsDir, ['small'])
  t.is(out.smallSize, 5)
  t.is(out.rootMode, S_IFDIR | 0o755)
  t.is(out.blocks, 1000)
  t.is(out.bsize, 4096)

  // The server holds exactly those bytes, and st_ino is the server's own.
  const root = m.server.root
  const big = m.server.inodes.get(root.entries!.get('big')!)!
  t.true(big.data.equals(pattern(MiB)), 'the server holds the bytes written')
  t.is(out.ino, big.ino)
  t.false(root.entries!.has('gone'))

  // What the requests carried.
  const ops = new Set(m.server.seen.map((r) => r.opcode))
  for (const op of [OP.LOOKUP, OP.CREATE, OP.WRITE, OP.READ, OP.OPEN, OP.FLUSH, OP.RELEASE, OP.MKDIR, OP.UNLINK, OP.OPENDIR, OP.READDIR, OP.STATFS]) {
    t.true(ops.has(op), `the server saw opcode ${op}`)
  }
  const writes = m.server.seen.filter((r) => r.opcode === OP.WRITE)
  t.true(writes.some((r) => r.bodyLength === 40 + MiB), 'a 1 MiB write arrives whole')
  t.true(m.server.seen.every((r) => r.uid === 0 && r.gid === 0 && r.handles.length === 1))
  const stats = native.shareClientStats(m.handle)
  t.is(stats.requests, m.server.seen.length)
  t.true(stats.bytesWritten >= MiB + 6)
  t.true(stats.bytesRead >= MiB, 'the read went to the server (open drops the page cache)')

  native.shareClientUnmount(m.handle)
  t.deepEqual(mountsAt(m.dir), [])
  native.shareClientUnmount(m.handle) // idempotent
  t.is(m.events.filter((e) => e.event === ShareClientEvent.Stopped).length, 0)
})

test.serial('one nodeid per file: repeated lookups and hard links reuse it; groups go with the caller', async (t) => {
  if (!checkPrerequisites(t)) return
  const m = mount(t, { attrTimeoutMs: 0, slots: 4 })
  const root = m.server.root
  const a = m.server.add(root, 'a', S_IFREG | 0o644)
  a.data = Buffer.from('0123456789')

  const first = await node<{ ino: number; size: number }[]>(t, m.dir, `
    const fs = require('fs'), path = require('path')
    const out = []
    for (let i = 0; i < 5; i++) { const s = fs.statSync(path.join(process.argv[1], 'a')); out.push({ ino: s.ino, size: s.size }) }
    console.log(JSON.stringify(out))
  `)
  t.deepEqual(first, Array(5).fill({ ino: a.ino, size: 10 }))
  t.true(m.server.lookups.get('a')! >= 2, 'with no caching, every stat asks the server')
  const nodes = native.shareClientStats(m.handle).nodes
  t.is(nodes, 2, 'the root and a')

  const linked = await node<{ a: number; b: number; nlink: number }>(t, m.dir, `
    const fs = require('fs'), path = require('path')
    fs.linkSync(path.join(process.argv[1], 'a'), path.join(process.argv[1], 'b'))
    const a = fs.statSync(path.join(process.argv[1], 'a')), b = fs.statSync(path.join(process.argv[1], 'b'))
    console.log(JSON.stringify({ a: a.ino, b: b.ino, nlink: b.nlink }))
  `)
  t.deepEqual(linked, { a: a.ino, b: a.ino, nlink: 2 })
  const link = m.server.seen.find((r) => r.opcode === OP.LINK)!
  t.is(link.handles.length, 2, 'LINK carries the new parent and the linked file')
  t.is(m.server.inodeOf(link.handles[1])?.ino, a.ino)
  t.is(native.shareClientStats(m.handle).nodes, nodes, 'a hard link maps to the nodeid the file has')

  // Supplementary groups come from the calling process.
  m.server.seen = []
  const pid = await node<number>(t, m.dir, `
    process.setgroups([1234, 5678])
    try { require('fs').statSync(require('path').join(process.argv[1], 'probe')) } catch {}
    console.log(process.pid)
  `)
  const probe = m.server.seen.find((r) => r.opcode === OP.LOOKUP && cString(r.body) === 'probe')!
  t.truthy(probe)
  t.deepEqual(probe.groups, [1234, 5678])
  t.is(probe.pid, pid)
})

test.serial('a malformed or failed reply fails the call rather than hang', async (t) => {
  if (!checkPrerequisites(t)) return
  const m = mount(t)
  const bad = (name: string, reply: () => Uint8Array): void => {
    m.server.hooks.set(name, (slot) => native.shareClientReply(m.handle, slot, reply()))
  }
  const entry = m.server.entryOut(m.server.root)
  bad('past-end', () => {
    const r = wireReply(0, entry, wireHandle(1))
    new DataView(r.buffer).setUint32(4, entry.length + 1, true) // body_len past the end
    return r
  })
  bad('positive', () => wireReply(2))
  bad('internal', () => wireReply(-512))
  bad('no-handle', () => wireReply(0, entry))
  bad('bad-handle', () => {
    const h = wireHandle(1)
    new DataView(h.buffer).setUint32(12, 0, true)
    return wireReply(0, entry, h)
  })
  bad('short', () => new Uint8Array(8))
  m.server.hooks.set('unreachable', (slot) => native.shareClientFail(m.handle, slot, E.ENOTCONN))

  const out = await node<Record<string, string>>(t, m.dir, `
    const fs = require('fs'), path = require('path')
    const out = {}
    for (const name of ['past-end', 'positive', 'internal', 'no-handle', 'bad-handle', 'short', 'unreachable']) {
      try { fs.statSync(path.join(process.argv[1], name)); out[name] = 'ok' } catch (e) { out[name] = e.code }
    }
    console.log(JSON.stringify(out))
  `)
  t.deepEqual(out, {
    'past-end': 'EIO', positive: 'EIO', internal: 'EIO', 'no-handle': 'EIO', 'bad-handle': 'EIO', short: 'EIO',
    unreachable: 'ENOTCONN',
  })
  t.is(native.shareClientStats(m.handle).nodes, 1, 'no nodeid was given for a refused entry')

  // Answers for slots with nothing pending are ignored.
  native.shareClientReply(m.handle, 0, wireReply(0))
  native.shareClientFail(m.handle, 1, E.EIO)
  t.is(native.shareClientOpcode(m.handle, 0), 0)
})

test.serial('an interrupted request is reported with its slot, and answered once', async (t) => {
  if (!checkPrerequisites(t)) return
  const m = mount(t)
  let held: number | undefined
  let child: ChildProcess | undefined
  m.server.hooks.set('slow', (slot) => {
    held = slot
    t.is(native.shareClientOpcode(m.handle, slot), OP.LOOKUP)
    child?.kill('SIGTERM')
  })
  const interrupted = new Promise<void>((resolve) => {
    const poll = setInterval(() => {
      const e = m.events.find((x) => x.event === ShareClientEvent.Interrupt)
      if (e === undefined) return
      clearInterval(poll)
      t.is(e.slot, held ?? -1)
      native.shareClientFail(m.handle, e.slot, E.EINTR)
      native.shareClientFail(m.handle, e.slot, E.EIO) // a second answer is ignored
      resolve()
    }, 10)
  })
  const r = await run('stat', [path.join(m.dir, 'slow')], (c) => (child = c))
  await interrupted
  t.is(r.signal, 'SIGTERM')
  t.not(held, undefined)

  // Still serving.
  const after = await run('stat', ['-c', '%s', path.join(m.dir)])
  t.is(after.code, 0, after.stderr)
})

test.serial('unmount: EBUSY while in use; an unmount from outside stops the client', async (t) => {
  if (!checkPrerequisites(t)) return
  const m = mount(t)
  let holder: ChildProcess | undefined
  const inside = new Promise<void>((resolve) => {
    void run('sh', ['-c', `cd '${m.dir}' && echo in && exec sleep 30`], (c) => {
      holder = c
      c.stdout?.once('data', () => resolve())
    })
  })
  await inside
  const busy = t.throws(() => native.shareClientUnmount(m.handle))
  t.is((busy as Error & { code?: string }).code, 'EBUSY')
  const still = await run('stat', ['-c', '%F', m.dir])
  t.is(still.stdout.trim(), 'directory', 'still serving after EBUSY')
  holder!.kill('SIGKILL')
  await new Promise((resolve) => holder!.once('exit', resolve))

  const umount = await run('umount', [m.dir])
  t.is(umount.code, 0, umount.stderr)
  t.is(await m.stopped, 0, 'stopped, with no error')
  native.shareClientUnmount(m.handle)
  t.deepEqual(mountsAt(m.dir), [])
  // After the unmount, answers are ignored and the counters stay readable.
  native.shareClientReply(m.handle, 0, wireReply(0))
  t.is(typeof native.shareClientStats(m.handle).requests, 'number')
})
