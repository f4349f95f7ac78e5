/**
 * A shared volume's server against what it must refuse, on a real three-node cluster (real
 * etcd, real daemons, real FUSE). node-a serves a repl=2 shared volume; node-b and node-c
 * mount its FUSE client.
 *
 * - Forged file operations over an authenticated peer link, from a node id that is none of
 *   the cluster's daemons: for a volume node-a does not serve (NOT_SERVING), for the
 *   served one before registering as its client (NOT_A_CLIENT), then, registered in the
 *   kvdb as a real client registers, hand-built wire requests (native/share_wire.h): a
 *   handle of another volume, names that would leave the directory or are too long, a
 *   READ above 1 MiB and truncated requests each get an error reply, nothing appears on
 *   the server's mount, and the real clients keep working.
 * - fsop frames before the handshake on a raw WebSocket: the link is closed with an error
 *   frame, nothing is acknowledged and nothing is applied.
 * - /metrics on the server counts each client's operations and bytes.
 * - A client node that dies holding an fcntl lock: the lock is released once its lease
 *   expires, and another node gets it.
 */
import test, { type ExecutionContext } from 'ava'
import { randomBytes } from 'node:crypto'
import { mkdirSync, promises as fs, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import WebSocket, { type ClientOptions } from 'ws'
import { ApiClient } from '../../src/api/client'
import { EtcdKvdb } from '../../src/kvdb/etcd'
import { keys, type LeasedKey } from '../../src/kvdb/kvdb'
import { METRIC } from '../../src/metrics'
import { computeProof, type HandshakeParties } from '../../src/replication/auth'
import { decodeFrame, encodeFrame, PROTOCOL_VERSION, type Frame } from '../../src/replication/frames'
import { PEER_PATH, PeerLinks, type PeerLink } from '../../src/replication'
import { clientPskOptions, peerPsk } from '../../src/replication/psk'
import { ShareRegistry } from '../../src/shares/share-registry'
import { parseExposition, sampleValue } from '../cli/exposition'
import { startCluster, waitFor, TEST_NODE_TTL, type Cluster, type ClusterNode } from '../helpers/cluster'
import { cleanupRunDir, leftoversUnder } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { MiB, pluginOk, sha, writeSynced } from '../helpers/volume-io'
import { endAllChildren, holdLock, tryLock, type Child } from '../faults/cross-node'

assertIntegrationPreconditions()

const E = os.constants.errno
const VOLUME = 'sbad'
const OTHER = 'sbad-other'
const INTRUDER = 'intruder'
const LOCK_REFUSED = ['EAGAIN', 'EWOULDBLOCK', 'EACCES']
const LOCK_RELEASE_WITHIN_MS = 20_000

let cluster: Cluster
let volumeId = ''
let otherId = ''
const mp: Record<string, string> = {}
const mountIds: Record<string, string[]> = { 'node-a': [], 'node-b': [], 'node-c': [] }
const log = pino({ level: 'silent' })
let intruder: PeerLinks | undefined
let intruderKvdb: EtcdKvdb | undefined
let registration: LeasedKey | undefined
let liveness: LeasedKey | undefined
let rootHandle: WireHandle | undefined
let nextXid = 1
const children: Child[] = []

const node = (id: string): ClusterNode => cluster.node(id)

// ---- wire encoding (native/share_wire.h) --------------------------------------

const OP = { LOOKUP: 1, GETATTR: 3, MKDIR: 9, OPEN: 14, READ: 15, RELEASE: 18, ROOT: 0x10001 } as const
const O_RDONLY = 0

interface WireHandle { tag: bigint; type: number; bytes: Buffer }
interface Reply { error: number; flags: number; handle?: WireHandle; body: Buffer }

const pad8 = (n: number) => (n + 7) & ~7

function encodeHandle(h: WireHandle): Buffer {
  const out = Buffer.alloc(16 + pad8(h.bytes.length))
  out.writeBigUInt64LE(h.tag, 0)
  out.writeInt32LE(h.type, 8)
  out.writeUInt32LE(h.bytes.length, 12)
  h.bytes.copy(out, 16)
  return out
}

/** A wire request as root (uid 0, gid 0, no groups). */
function request(opcode: number, handles: WireHandle[], body: Buffer = Buffer.alloc(0), o: { bodyLen?: number } = {}): Buffer {
  const head = Buffer.alloc(32)
  head.writeUInt32LE(opcode, 0)
  head.writeUInt32LE(0, 4)
  head.writeUInt32LE(0, 8)
  head.writeUInt32LE(4242, 12)
  head.writeUInt16LE(0, 16)
  head.writeUInt8(handles.length, 18)
  head.writeUInt32LE(o.bodyLen ?? body.length, 20)
  return Buffer.concat([head, ...handles.map(encodeHandle), body])
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
  return { error, flags, ...(handle ? { handle } : {}), body: Buffer.from(buf.subarray(at)) }
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
const openIn = (flags: number) => u32s(flags, 0)
function readIn(fh: bigint, offset: number, size: number): Buffer {
  const b = Buffer.alloc(40)
  b.writeBigUInt64LE(fh, 0)
  b.writeBigUInt64LE(BigInt(offset), 8)
  b.writeUInt32LE(size, 16)
  return b
}
const releaseIn = (fh: bigint) => Buffer.concat([u64(fh), u32s(0, 0), u64(0n)])
const tagOf = (id: string) => BigInt(`0x${id}`)

// ---- helpers -------------------------------------------------------------------

async function mountTypeOf(mountpoint: string): Promise<string | undefined> {
  const mounts = await fs.readFile('/proc/self/mounts', 'utf8')
  return mounts.split('\n').map((l) => l.split(' ')).find((f) => f[1] === mountpoint)?.[2]
}

function intruderLink(): PeerLink {
  intruder ??= new PeerLinks({ nodeId: INTRUDER, clusterId: cluster.clusterId, secret: cluster.secret, log, psk: true })
  return intruder.link('node-a', `127.0.0.1:${node('node-a').peerPort}`)
}

/** One forged fsop from the intruder; the decoded wire reply. */
async function fsop(req: Buffer, vol = volumeId): Promise<Reply> {
  const reply = await intruderLink().request({ t: 'fsop', vol, xid: nextXid++, data: req })
  if (!reply) throw new Error('an fsop acknowledged with no reply')
  return decodeReply(reply)
}

async function mountOn(n: ClusterNode, id: string): Promise<string> {
  const m = (await pluginOk(n, '/VolumeDriver.Mount', { Name: VOLUME, ID: id })).Mountpoint as string
  mountIds[n.nodeId]!.push(id)
  return m
}

async function scrape(n: ClusterNode): Promise<ReturnType<typeof parseExposition>> {
  const res = await fetch(`${n.apiUrl}/metrics`)
  if (res.status !== 200) throw new Error(`/metrics on ${n.nodeId} answered ${res.status}`)
  return parseExposition(await res.text())
}

/** Pids whose parent is `pid`. */
function childrenOf(pid: number): number[] {
  const out: number[] = []
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push(Number(d))
    } catch { /* gone */ }
  }
  return out
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ')
  } catch {
    return false
  }
}

async function stillServes(t: ExecutionContext, what: string): Promise<void> {
  const bytes = randomBytes(2 * MiB + 17)
  const file = `after-${what}.bin`
  await writeSynced(path.join(mp['node-b']!, file), bytes)
  t.is(sha(await fs.readFile(path.join(mp['node-b']!, file))), sha(bytes), `${what}: node-b reads back its own write`)
  t.is(sha(await fs.readFile(path.join(mp['node-a']!, file))), sha(bytes), `${what}: the server's ext4 has node-b's write`)
  t.is(sha(await fs.readFile(path.join(mp['node-c']!, file))), sha(bytes), `${what}: node-c reads node-b's write`)
  t.is(node('node-a').child.exitCode, null, `${what}: node-a is running`)
}

// ---- setup ---------------------------------------------------------------------

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b', 'node-c'])
  await pluginOk(node('node-a'), '/VolumeDriver.Create', { Name: VOLUME, Opts: { size: '128M', repl: '2', shared: 'true' } })
  await pluginOk(node('node-a'), '/VolumeDriver.Create', { Name: OTHER, Opts: { size: '32M', repl: '1' } })
  for (const id of ['node-a', 'node-b', 'node-c']) mp[id] = await mountOn(node(id), `m-${id}`)
  const api = new ApiClient(node('node-a').apiUrl)
  volumeId = (await api.inspectVolume(VOLUME)).id
  otherId = (await api.inspectVolume(OTHER)).id
  if (!/^[0-9a-f]{16}$/.test(volumeId) || !/^[0-9a-f]{16}$/.test(otherId)) throw new Error(`unexpected volume ids ${volumeId} ${otherId}`)
})

test.afterEach.always((t) => {
  if (t.passed) return
  mkdirSync('/tmp/pxd-test-logs', { recursive: true })
  for (const n of cluster?.nodes ?? []) writeFileSync(`/tmp/pxd-test-logs/shared-bad-input-${n.nodeId}.log`, n.logs())
  t.log('daemon logs in /tmp/pxd-test-logs/shared-bad-input-*.log')
})

test.after.always(async () => {
  for (const c of children) c.end()
  endAllChildren()
  await registration?.revoke().catch(() => undefined)
  await liveness?.revoke().catch(() => undefined)
  await intruderKvdb?.close().catch(() => undefined)
  await intruder?.close().catch(() => undefined)
  if (!cluster) return
  for (const id of ['node-c', 'node-b', 'node-a']) {
    const n = cluster.nodes.find((x) => x.nodeId === id)
    if (!n || n.child.exitCode !== null || n.child.signalCode !== null) continue
    for (const m of [...(mountIds[id] ?? [])].reverse()) {
      await pluginCall(n.pluginSocket, '/VolumeDriver.Unmount', { Name: VOLUME, ID: m }).catch(() => undefined)
    }
  }
  const dir = cluster.dir
  const runDirs = cluster.nodes.map((n) => n.runDir)
  await cluster.stop()
  // A node that could not unmount (dead, hung) leaves its mounts to its stop; check, pass or fail.
  let left = leftoversUnder(dir)
  if (left.length > 0) {
    for (const r of runDirs) cleanupRunDir(r)
    left = leftoversUnder(dir)
    throw new Error(`left mounted or attached after the test (cleaned up now; still there: ${left.join(', ') || 'none'})`)
  }
})

// ---- tests ---------------------------------------------------------------------

test.serial('node-a serves the shared volume from its ext4; node-b and node-c mount the FUSE client', async (t) => {
  t.is(await mountTypeOf(mp['node-a']!), 'ext4')
  t.is(await mountTypeOf(mp['node-b']!), 'fuse.pxd-shared')
  t.is(await mountTypeOf(mp['node-c']!), 'fuse.pxd-shared')
  const info = await new ApiClient(node('node-c').apiUrl).inspectVolume(VOLUME)
  t.is(info.sharing?.server, 'node-a')
  t.deepEqual(info.sharing?.clients.map((c) => c.nodeId).sort(), ['node-b', 'node-c'])
})

test.serial('an authenticated peer\'s fsop and fscancel for a volume node-a does not serve are refused with NOT_SERVING', async (t) => {
  const root = request(OP.ROOT, [])
  for (const [what, vol] of [['another volume of the cluster', otherId], ['a made-up volume id', randomBytes(8).toString('hex')], ['a name, not an id', VOLUME]] as const) {
    await t.throwsAsync(intruderLink().request({ t: 'fsop', vol, xid: nextXid++, data: root }), { code: 'NOT_SERVING' }, `fsop for ${what}`)
    await t.throwsAsync(intruderLink().request({ t: 'fscancel', vol, xid: nextXid++ }), { code: 'NOT_SERVING' }, `fscancel for ${what}`)
  }
})

test.serial('an fsop for the served volume from a node that has not mounted it is refused with NOT_A_CLIENT, and applies nothing', async (t) => {
  await t.throwsAsync(fsop(request(OP.ROOT, [])), { code: 'NOT_A_CLIENT' }, 'kOpRoot')
  // A MKDIR with a handle of the volume's tag must not run either (refused before the handle is looked at).
  const guessedRoot: WireHandle = { tag: tagOf(volumeId), type: 1, bytes: Buffer.alloc(8) }
  await t.throwsAsync(fsop(request(OP.MKDIR, [guessedRoot], mkdirIn(0o755, 'intruder-was-here'))), { code: 'NOT_A_CLIENT' }, 'MKDIR')
  await t.throwsAsync(intruderLink().request({ t: 'fscancel', vol: volumeId, xid: 12345 }), { code: 'NOT_A_CLIENT' }, 'fscancel')
  t.false((await fs.readdir(mp['node-a']!)).includes('intruder-was-here'))
  const info = await new ApiClient(node('node-a').apiUrl).inspectVolume(VOLUME)
  t.false(info.sharing!.clients.some((c) => c.nodeId === INTRUDER), 'the intruder is no client')
})

test.serial('registered as a client, the intruder\'s hand-built wire requests that break the rules get error replies, nothing is made, and the node keeps serving', async (t) => {
  t.timeout(120_000)
  // What node-b wrote, for the READs below.
  const probe = randomBytes(64 * 1024)
  await writeSynced(path.join(mp['node-b']!, 'probe.bin'), probe)

  // Register the way a client node does: shares/<name>/<nodeId> under a lease of its own.
  intruderKvdb = await EtcdKvdb.open({ endpoints: [cluster.etcd.endpoint], clusterId: cluster.clusterId, log })
  registration = await new ShareRegistry(intruderKvdb, INTRUDER, TEST_NODE_TTL).register(VOLUME, { mounts: 1, ops: 0, bytes: 0, since: new Date().toISOString() })
  const registered = await new ShareRegistry(intruderKvdb, 'observer', TEST_NODE_TTL).clients(VOLUME)
  t.true(registered.some((c) => c.nodeId === INTRUDER), `the intruder's record is in the kvdb (clients: ${registered.map((c) => c.nodeId).join(', ')})`)
  // A record alone is not enough: a client is a member of the cluster holding its lease.
  await t.throwsAsync(fsop(request(OP.ROOT, [])), { code: 'NOT_A_CLIENT' }, 'a record without a node lease')
  liveness = await intruderKvdb.putLeased(keys.alive(INTRUDER), { nodeId: INTRUDER }, TEST_NODE_TTL)
  // The server remembers a refusal for a second.
  await new Promise((resolve) => setTimeout(resolve, 1_200))

  // kOpRoot works: the root's handle, tagged with the volume's id.
  const root = await fsop(request(OP.ROOT, []))
  t.is(root.error, 0, `kOpRoot: ${root.error}`)
  if (root.error !== 0 || !root.handle) return
  t.is(root.handle.tag, tagOf(volumeId), 'the handle carries the volume\'s tag')
  t.true(root.handle.bytes.length > 0)
  rootHandle = root.handle

  // A well-formed LOOKUP finds node-b's file.
  const found = await fsop(request(OP.LOOKUP, [root.handle], name('probe.bin')))
  t.is(found.error, 0, `LOOKUP probe.bin: ${found.error}`)
  t.is(Number(found.body.readBigUInt64LE(40 + 8)), probe.length, 'the size node-b wrote')

  // Another volume's tag on the root's handle: stale.
  const foreign: WireHandle = { ...root.handle, tag: tagOf(otherId) }
  t.is((await fsop(request(OP.LOOKUP, [foreign], name('probe.bin')))).error, -E.ESTALE, 'LOOKUP with another volume\'s handle')
  t.is((await fsop(request(OP.GETATTR, [foreign], Buffer.alloc(16)))).error, -E.ESTALE, 'GETATTR with another volume\'s handle')
  t.is((await fsop(request(OP.MKDIR, [foreign], mkdirIn(0o755, 'foreign-dir')))).error, -E.ESTALE, 'MKDIR with another volume\'s handle')

  // Names that are not one path component, or too long.
  const before = (await fs.readdir(mp['node-a']!)).sort()
  t.is((await fsop(request(OP.MKDIR, [root.handle], mkdirIn(0o755, '..')))).error, -E.EINVAL, 'MKDIR ".."')
  t.is((await fsop(request(OP.MKDIR, [root.handle], mkdirIn(0o755, '.')))).error, -E.EINVAL, 'MKDIR "."')
  t.is((await fsop(request(OP.MKDIR, [root.handle], mkdirIn(0o755, 'a/b')))).error, -E.EINVAL, 'MKDIR "a/b"')
  t.is((await fsop(request(OP.MKDIR, [root.handle], mkdirIn(0o755, '../escape')))).error, -E.EINVAL, 'MKDIR "../escape"')
  const long = (await fsop(request(OP.MKDIR, [root.handle], mkdirIn(0o755, 'n'.repeat(300))))).error
  t.true(long === -E.ENAMETOOLONG || long === -E.EINVAL, `MKDIR of a 300-byte name: ${long}`)
  t.deepEqual((await fs.readdir(mp['node-a']!)).sort(), before, 'nothing new on the server\'s mount')
  await t.throwsAsync(fs.stat(path.join(mp['node-a']!, 'a')), { code: 'ENOENT' })
  await t.throwsAsync(fs.stat(path.join(path.dirname(mp['node-a']!), 'escape')), { code: 'ENOENT' }, 'nothing beside the mount')
  await t.throwsAsync(fs.stat(path.join(mp['node-a']!, 'foreign-dir')), { code: 'ENOENT' })

  // READ: within the limit it reads node-b's bytes; above 1 MiB it is refused.
  if (!found.handle) return
  const opened = await fsop(request(OP.OPEN, [found.handle], openIn(O_RDONLY)))
  t.is(opened.error, 0, `OPEN: ${opened.error}`)
  const fh = opened.body.readBigUInt64LE(0)
  const read = await fsop(request(OP.READ, [found.handle], readIn(fh, 0, 4096)))
  t.is(read.error, 0)
  t.true(read.body.equals(probe.subarray(0, 4096)), 'a 4 KiB READ returns node-b\'s bytes')
  const huge = await fsop(request(OP.READ, [found.handle], readIn(fh, 0, MiB + 1)))
  t.is(huge.error, -E.EINVAL, 'READ of 1 MiB + 1')
  t.is(huge.body.length, 0)
  const huger = await fsop(request(OP.READ, [found.handle], readIn(fh, 0, 0xffffffff)))
  t.is(huger.error, -E.EINVAL, 'READ of 4 GiB - 1')
  t.is((await fsop(request(OP.RELEASE, [found.handle], releaseIn(fh)))).error, 0)

  // Truncated and inconsistent requests: an error reply (EPROTO, or EINVAL), no body.
  const good = request(OP.GETATTR, [root.handle], Buffer.alloc(16))
  const broken: Array<[string, Buffer]> = [
    ['empty', Buffer.alloc(0)],
    ['a header cut at 20 bytes', good.subarray(0, 20)],
    ['the header alone', good.subarray(0, 32)],
    ['a handle cut short', good.subarray(0, 40)],
    ['a body cut short', good.subarray(0, good.length - 8)],
    ['body_len past the end', request(OP.GETATTR, [root.handle], Buffer.alloc(16), { bodyLen: 4096 })],
    ['a MKDIR cut inside its name', request(OP.MKDIR, [root.handle], mkdirIn(0o755, 'cut-short')).subarray(0, 32 + 16 + pad8(root.handle.bytes.length) + 10)],
  ]
  const answers: string[] = []
  for (const [what, req] of broken) {
    const r = await fsop(req)
    answers.push(`${what}: ${r.error}`)
    t.true(r.error === -E.EPROTO || r.error === -E.EINVAL, `${what}: error ${r.error}`)
    t.is(r.body.length, 0, `${what}: no body`)
  }
  t.log(`truncated requests answered: ${answers.join('; ')}`)
  t.false((await fs.readdir(mp['node-a']!)).some((n) => n.startsWith('cut')), 'no directory from the cut MKDIR')
  t.is((await fsop(good)).error, 0, 'a well-formed GETATTR after them works')

  // The real clients carry on.
  await stillServes(t, 'forged-requests')

  // Its record gone, the intruder is no client any more (the server checks every 2 s).
  await registration.revoke()
  registration = undefined
  const refused = await waitFor('the server to forget the intruder once its record is gone', async () => {
    try {
      await fsop(request(OP.GETATTR, [root.handle!], Buffer.alloc(16)))
      return undefined
    } catch (err) {
      return (err as { code?: string }).code
    }
  }, (TEST_NODE_TTL + 10) * 1000, 500)
  t.is(refused, 'NOT_A_CLIENT')
  t.regex(node('node-a').logs(), new RegExp(`"client":"${INTRUDER}".*shared volume client dropped`))
})

/** A raw WebSocket to a peer port that records every frame and the close. */
class RawPeer {
  readonly ws: WebSocket
  readonly frames: Frame[] = []
  undecodable = 0
  closed = false
  closeCode: number | undefined
  readonly opened: Promise<boolean>

  constructor(port: number) {
    // The peer port speaks TLS-PSK (the cluster's default): the TLS session is what any holder of the secret gets; the frames inside are unauthenticated.
    const psk = clientPskOptions(peerPsk(cluster.secret, cluster.clusterId), { secured: false }) as unknown as ClientOptions
    this.ws = new WebSocket(`wss://127.0.0.1:${port}${PEER_PATH}`, { ...psk, perMessageDeflate: false, handshakeTimeout: 10_000 })
    this.opened = new Promise((resolve) => {
      this.ws.once('open', () => resolve(true))
      this.ws.once('close', () => resolve(false))
    })
    this.ws.on('message', (data: Buffer) => {
      try {
        this.frames.push(decodeFrame(data))
      } catch {
        this.undecodable++
      }
    })
    this.ws.on('error', () => undefined)
    this.ws.on('close', (code) => {
      this.closed = true
      this.closeCode = code
    })
  }

  async until(cond: () => boolean, timeoutMs = 10_000): Promise<boolean> {
    const end = Date.now() + timeoutMs
    while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 50))
    return cond()
  }

  errors(): string[] {
    return this.frames.flatMap((f) => (f.t === 'error' ? [f.code] : []))
  }

  end(): void {
    this.ws.terminate()
  }
}

test.serial('fsop frames on an unauthenticated WebSocket to the peer port get an error frame and a close, and apply nothing', async (t) => {
  const a = node('node-a')
  const handle = rootHandle ?? { tag: tagOf(volumeId), type: 1, bytes: Buffer.alloc(8) }
  const mkdir = (dir: string, id: number) => encodeFrame({ t: 'fsop', id, vol: volumeId, xid: 900_000 + id, data: request(OP.MKDIR, [handle], mkdirIn(0o755, dir)) })

  // 1. An fsop as the very first frame.
  const first = new RawPeer(a.peerPort)
  try {
    t.true(await first.opened, 'the peer port takes the WebSocket')
    first.ws.send(mkdir('unauth-first', 1))
    first.ws.send(encodeFrame({ t: 'fsop', id: 2, vol: volumeId, xid: 900_100, data: request(OP.ROOT, []) }))
    t.true(await first.until(() => first.closed), 'the link is closed')
    t.deepEqual(first.errors(), ['AUTH_REQUIRED'], `one error frame (got ${first.frames.map((f) => f.t).join(',') || 'no frame'})`)
    t.false(first.frames.some((f) => f.t === 'ack' || f.t === 'ready' || f.t === 'challenge'), 'nothing acknowledged')
  } finally {
    first.end()
  }

  // 2. A hello, then an fsop instead of the proof.
  const second = new RawPeer(a.peerPort)
  try {
    t.true(await second.opened)
    second.ws.send(encodeFrame({ t: 'hello', v: PROTOCOL_VERSION, nodeId: 'ghost', clusterId: cluster.clusterId, nonce: randomBytes(32) }))
    t.true(await second.until(() => second.frames.some((f) => f.t === 'challenge')), 'challenged')
    second.ws.send(mkdir('unauth-after-hello', 3))
    t.true(await second.until(() => second.closed), 'the link is closed')
    t.deepEqual(second.errors(), ['AUTH_REQUIRED'])
    t.false(second.frames.some((f) => f.t === 'ack' || f.t === 'ready'), 'nothing acknowledged')
  } finally {
    second.end()
  }

  // 3. A hello with a wrong proof, then an fsop.
  const third = new RawPeer(a.peerPort)
  try {
    t.true(await third.opened)
    const nonce = randomBytes(32)
    third.ws.send(encodeFrame({ t: 'hello', v: PROTOCOL_VERSION, nodeId: 'ghost2', clusterId: cluster.clusterId, nonce }))
    t.true(await third.until(() => third.frames.some((f) => f.t === 'challenge')))
    const ch = third.frames.find((f) => f.t === 'challenge')
    if (ch?.t === 'challenge') {
      const parties: HandshakeParties = { clusterId: cluster.clusterId, clientNodeId: 'ghost2', serverNodeId: 'node-a', clientNonce: nonce, serverNonce: ch.nonce }
      third.ws.send(encodeFrame({ t: 'auth', proof: computeProof(randomBytes(64), 'client', parties) }))
    }
    third.ws.send(mkdir('unauth-bad-proof', 4))
    t.true(await third.until(() => third.closed), 'the link is closed')
    t.deepEqual(third.errors(), ['AUTH_FAILED'])
    t.false(third.frames.some((f) => f.t === 'ack' || f.t === 'ready'), 'nothing acknowledged')
  } finally {
    third.end()
  }

  const names = await fs.readdir(mp['node-a']!)
  t.false(names.some((n) => n.startsWith('unauth-')), `nothing made on the server's mount: ${names.join(', ')}`)
  const clients = (await scrape(a)).get(METRIC.shareOps)?.samples.map((s) => s.labels.client) ?? []
  t.false(clients.includes('ghost') || clients.includes('ghost2'), `no counters for an unauthenticated node: ${clients.join(', ')}`)
  t.is(a.child.exitCode, null, 'node-a is running')
  await stillServes(t, 'unauthenticated-frames')
})

test.serial('/metrics on the server counts each client node\'s operations and bytes, and they grow with its I/O', async (t) => {
  const a = node('node-a')
  const before = await scrape(a)
  t.is(before.get(METRIC.shareOps)?.type, 'counter')
  t.is(before.get(METRIC.shareBytes)?.type, 'counter')
  const labels = { volume: VOLUME, client: 'node-b' }
  const ops0 = sampleValue(before, METRIC.shareOps, labels) ?? 0
  const bytes0 = sampleValue(before, METRIC.shareBytes, labels) ?? 0
  const data = randomBytes(MiB)
  await writeSynced(path.join(mp['node-b']!, 'metrics.bin'), data)
  const fd = await fs.open(path.join(mp['node-b']!, 'probe.bin'), 'r')
  await fd.read(Buffer.alloc(4096), 0, 4096, 0)
  await fd.close()
  const after = await scrape(a)
  const ops1 = sampleValue(after, METRIC.shareOps, labels)
  const bytes1 = sampleValue(after, METRIC.shareBytes, labels)
  t.log(`node-b on node-a: operations ${ops0} -> ${ops1}, bytes ${bytes0} -> ${bytes1}`)
  t.true(ops1 !== undefined && ops1 > 0, `${METRIC.shareOps}{volume="${VOLUME}",client="node-b"} = ${ops1}`)
  t.true(bytes1 !== undefined && bytes1 > 0, `${METRIC.shareBytes}{volume="${VOLUME}",client="node-b"} = ${bytes1}`)
  t.true(ops1! > ops0, 'operations grew with node-b\'s I/O')
  t.true(bytes1! - bytes0 >= MiB, `bytes grew by at least the MiB node-b wrote (${bytes1! - bytes0})`)
  t.true((sampleValue(after, METRIC.shareOps, { volume: VOLUME, client: 'node-c' }) ?? 0) > 0, 'node-c has its own series')
  // Only the server counts: the clients serve nothing.
  t.is(sampleValue(await scrape(node('node-b')), METRIC.shareOps, labels), undefined, 'node-b serves nothing')
})

test.serial('a client node killed while holding an fcntl lock: the lock is released once its lease expires, and another node gets it', async (t) => {
  t.timeout(180_000)
  const b = node('node-b')
  const bMount = mp['node-b']!
  await fs.writeFile(path.join(mp['node-a']!, 'lockfile'), 'x')
  const holder = await holdLock('lockf', path.join(bMount, 'lockfile'))
  children.push(holder)
  t.true(LOCK_REFUSED.includes(await tryLock('lockf', path.join(mp['node-c']!, 'lockfile'))), 'node-c is refused while node-b holds the lock')

  const bChildren = childrenOf(b.pid)
  await b.kill()
  const killedAt = Date.now()
  // node-b's lease has not expired yet: its lock still holds.
  const early = await tryLock('lockf', path.join(mp['node-c']!, 'lockfile'))
  const earlyMs = Date.now() - killedAt
  if (earlyMs < (TEST_NODE_TTL - 1) * 1000) t.true(LOCK_REFUSED.includes(early), `right after the kill (${earlyMs} ms) node-c is still refused: ${early}`)
  else t.log(`the early attempt took ${earlyMs} ms, past the lease: not checked (${early})`)

  // The holder is left on a dead FUSE mount: end it by pid.
  holder.end()
  const code = await holder.exited(15_000).catch((err: Error) => err)
  t.false(code instanceof Error, `the lock holder on node-b's dead mount ends: ${code instanceof Error ? code.message : ''}`)

  const got = await waitFor('node-c to get the lock once node-b\'s lease expired', async () => {
    const r = await tryLock('lockf', path.join(mp['node-c']!, 'lockfile'))
    return r === 'ok' ? Date.now() - killedAt : undefined
  }, LOCK_RELEASE_WITHIN_MS + 10_000, 500)
  t.log(`node-c got the lock ${got} ms after node-b was killed (lease ${TEST_NODE_TTL} s)`)
  t.true(got <= LOCK_RELEASE_WITHIN_MS, `within ${LOCK_RELEASE_WITHIN_MS} ms: ${got} ms`)
  t.regex(node('node-a').logs(), /"client":"node-b".*shared volume client dropped/)
  const info = await new ApiClient(node('node-a').apiUrl).inspectVolume(VOLUME)
  t.deepEqual(info.sharing?.clients.map((c) => c.nodeId), ['node-c'], 'node-b is no client any more')

  // node-c and the server carry on.
  const after = randomBytes(MiB + 3)
  await writeSynced(path.join(mp['node-c']!, 'after-kill.bin'), after)
  t.is(sha(await fs.readFile(path.join(mp['node-a']!, 'after-kill.bin'))), sha(after))

  // Nothing node-b's daemon started outlives it.
  const orphans = bChildren.filter(alive)
  t.deepEqual(orphans, [], `node-b's children after the kill: ${orphans.join(', ')}`)

  // node-b comes back: its stale mount is cleaned, and it can mount the volume again.
  t.is(await mountTypeOf(bMount), 'fuse.pxd-shared', 'the dead FUSE mount is still in the table until node-b starts again')
  mountIds['node-b'] = []
  const b2 = await cluster.start('node-b')
  t.is(await mountTypeOf(bMount), undefined, 'the restarted node-b cleaned up its dead mount')
  const again = await mountOn(b2, 'm-node-b-again')
  t.is(again, bMount)
  t.is(await mountTypeOf(again), 'fuse.pxd-shared')
  t.is(sha(await fs.readFile(path.join(again, 'after-kill.bin'))), sha(after), 'node-b reads node-c\'s file')
  t.is(await tryLock('lockf', path.join(again, 'lockfile')), 'ok', 'node-b can take the lock again')
  await pluginOk(b2, '/VolumeDriver.Unmount', { Name: VOLUME, ID: 'm-node-b-again' })
  mountIds['node-b'] = []
  t.is(await mountTypeOf(bMount), undefined, 'nothing left mounted on node-b')
})
