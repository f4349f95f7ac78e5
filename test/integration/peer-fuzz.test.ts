/**
 * Fuzzing a live node's peer port. A two-node cluster holds a repl=2 volume with data;
 * for a bounded time (and count) several clients throw generated input at node-b's peer
 * port, one connection per case:
 *
 * - below WebSocket: random bytes, a TLS ClientHello, mangled HTTP upgrade requests, and
 *   malformed WebSocket frames after a good upgrade (reserved bits and opcodes, unmasked,
 *   absurd lengths, fragmented control frames, bad close codes);
 * - before the handshake: random and oversized messages, text, requests, mutated hellos,
 *   wrong versions and clusters, bad proofs;
 * - after a real handshake (the cluster secret): requests the replica must refuse (stale
 *   and future epochs, unknown volumes, "." and "..", writes past the end, reads of huge
 *   lengths, misaligned digests, conflicting opens, a drop of a listed replica), reads it
 *   may serve, then one frame that breaks the protocol (bit flips, truncation, field type
 *   swaps, huge and negative numbers, unknown `t`, wrong `v`, oversized, random bytes).
 *
 * Generated frames that decode as a request which would legitimately change the replica
 * (a write inside the volume at its epoch, an open at a newer epoch) are not sent, and
 * counted as skipped: the test is about what must be refused.
 *
 * Each case draws from its own PRNG, seeded from the run's seed and the case number, so a
 * seed names the same cases whatever the timing: PXD_FUZZ_SEED=<seed> replays a run
 * (PXD_FUZZ_MS and PXD_FUZZ_CASES bound it). Only bytes derived from the volume id, which
 * each new cluster draws afresh, can differ: a bit flip in it may or may not leave a valid id. Oracles while fuzzing: no ack before the
 * handshake, every valid request acknowledged, no write acknowledged as done, every
 * protocol break answered by a close. Afterwards: the daemon serves, and neither node's
 * replica files changed by a byte.
 */
import test from 'ava'
import { randomBytes, randomInt } from 'node:crypto'
import { promises as fs } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { Packr } from 'msgpackr'
import pino from 'pino'
import WebSocket from 'ws'
import { ApiClient } from '../../src/api/client'
import { BLOCK_SIZE } from '../../src/constants'
import { computeProof, type HandshakeParties } from '../../src/replication/auth'
import {
  decodeFrame, encodeFrame, isRequest, MAX_DATA_BYTES, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES, PROTOCOL_VERSION,
  type Frame, type RequestFrame,
} from '../../src/replication/frames'
import { PEER_PATH, PeerLinks } from '../../src/replication'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, type Cluster } from '../helpers/cluster'
import { pluginOk as call, replicaDigest, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

const SEED = process.env.PXD_FUZZ_SEED !== undefined ? Number(process.env.PXD_FUZZ_SEED) >>> 0 : randomInt(2 ** 32)
const DURATION_MS = Number(process.env.PXD_FUZZ_MS ?? 20_000)
const MAX_CASES = Number(process.env.PXD_FUZZ_CASES ?? 5_000)
const MAX_MESSAGES = 100_000
const WORKERS = 3
const REPLY_TIMEOUT_MS = 10_000
const TCP_LINGER_MS = 800
const FILE_BYTES = 1024 * 1024

// ---------------------------------------------------------------- PRNG (sfc32, seeded by splitmix32)

class Rng {
  #a: number
  #b: number
  #c: number
  #d: number

  constructor(seed: number, stream: number) {
    let s = (seed ^ Math.imul(stream + 1, 0x9e3779b9)) >>> 0
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0
      let z = s
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
      return (z ^ (z >>> 16)) >>> 0
    }
    this.#a = next(); this.#b = next(); this.#c = next(); this.#d = next()
    for (let i = 0; i < 12; i++) this.u32()
  }

  u32(): number {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0
    this.#d = (this.#d + 1) >>> 0
    this.#a = this.#b ^ (this.#b >>> 9)
    this.#b = (this.#c + (this.#c << 3)) >>> 0
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0
    this.#c = (this.#c + t) >>> 0
    return t
  }

  /** [0, n) for n up to 2^53. */
  int(n: number): number {
    if (n <= 2 ** 32) return Math.floor((this.u32() / 2 ** 32) * n)
    return Math.floor(((this.u32() * 2 ** 21 + (this.u32() >>> 11)) / 2 ** 53) * n)
  }

  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1)
  }

  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!
  }

  weighted<T extends string>(table: Record<T, number>): T {
    const entries = Object.entries(table) as Array<[T, number]>
    let r = this.int(entries.reduce((s, [, w]) => s + w, 0))
    for (const [k, w] of entries) {
      if (r < w) return k
      r -= w
    }
    return entries[0]![0]
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n)
    let i = 0
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.u32(), i)
    for (; i < n; i++) b[i] = this.u32() & 0xff
    return b
  }
}

// ---------------------------------------------------------------- the target

let cluster: Cluster
let volumeId = ''
let epoch = 0
let volumeSize = 0
let fileSha = ''
let replicasBefore: Record<string, string> = {}

const log = pino({ level: 'silent' })
const target = () => cluster.node('node-b')

/** sha256 of each node's replica files (data/crc). */
async function replicaDigests(): Promise<Record<string, string>> {
  return { 'node-a': await replicaDigest(cluster.node('node-a'), volumeId), 'node-b': await replicaDigest(cluster.node('node-b'), volumeId) }
}

// ---------------------------------------------------------------- tallies

class Tally {
  readonly counts = new Map<string, number>()
  add(key: string, n = 1): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + n)
  }

  get total(): number {
    let s = 0
    for (const v of this.counts.values()) s += v
    return s
  }

  table(): string {
    return [...this.counts.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([k, v]) => `  ${k.padEnd(34)} ${v}`).join('\n')
  }
}

const sent = new Tally()
const outcomes = new Tally()
const cases = new Tally()
const problems: string[] = []
const problem = (caseNo: number, what: string) => { if (problems.length < 50) problems.push(`case #${caseNo}: ${what}`) }

// ---------------------------------------------------------------- frame generation

/** A packer that lets through what encodeFrame's types would not: any value in any field. */
const loosePackr = new Packr({ useRecords: false, moreTypes: true })
const pack = (value: unknown): Buffer => loosePackr.pack(value)

const REQUEST_KINDS = ['create', 'open', 'write', 'read', 'digest', 'flush', 'close', 'drop'] as const

function randomVolume(r: Rng): string {
  for (;;) {
    const v = r.chance(0.6)
      ? r.bytes(8).toString('hex')
      : Array.from({ length: r.range(1, 40) }, () => r.pick([...'abcdefghijklmnopqrstuvwxyz0123456789_.-'])).join('')
    if (v !== volumeId && v !== '.' && v !== '..') return v
  }
}

function smallData(r: Rng): Buffer {
  return r.bytes(r.pick([0, 1, 512, 4096, 4096, 8192, 65536]))
}

/** A request of kind `t` with its fields filled in by `f` (defaults: the real volume at its epoch). */
function request(t: (typeof REQUEST_KINDS)[number], id: number, r: Rng, f: { vol?: string; epoch?: number; offset?: number; length?: number; size?: number; data?: Buffer } = {}): Record<string, unknown> {
  const vol = f.vol ?? volumeId
  const e = f.epoch ?? epoch
  switch (t) {
    case 'create': return { t, id, vol, size: f.size ?? volumeSize }
    case 'open': return { t, id, vol, epoch: e, size: f.size ?? volumeSize }
    case 'write': return { t, id, vol, epoch: e, seq: r.int(2 ** 32), offset: f.offset ?? 0, data: f.data ?? smallData(r) }
    case 'read': return { t, id, vol, epoch: e, offset: f.offset ?? 0, length: f.length ?? 4096 }
    case 'digest': return { t, id, vol, epoch: e, offset: f.offset ?? 0, length: f.length ?? BLOCK_SIZE }
    case 'flush': return { t, id, vol, epoch: e }
    case 'close': return { t, id, vol, epoch: e }
    case 'drop': return { t, id, vol }
  }
}

/** Requests the replica must refuse (or may serve, for reads), by kind. */
const REFUSED = {
  'stale-epoch': (r: Rng, id: number) =>
    request(r.pick(['write', 'read', 'digest', 'flush', 'close', 'open'] as const), id, r, { epoch: r.int(epoch) }),
  'future-epoch': (r: Rng, id: number) =>
    request(r.pick(['write', 'read', 'digest', 'flush', 'close'] as const), id, r, { epoch: epoch + 1 + r.int(r.pick([3, 1000, 2 ** 40])) }),
  'unknown-volume': (r: Rng, id: number) =>
    request(r.pick(REQUEST_KINDS), id, r, { vol: randomVolume(r), epoch: r.pick([0, epoch, epoch + 1]) }),
  'write-past-end': (r: Rng, id: number) => {
    const data = r.bytes(r.pick([1, 4096, 65536, 128 * 1024]))
    const offset = r.chance(0.5) ? volumeSize - data.length + 1 + r.int(data.length) : volumeSize + r.int(Number.MAX_SAFE_INTEGER - volumeSize)
    return request('write', id, r, { offset, data })
  },
  'read-past-end': (r: Rng, id: number) => {
    const length = r.range(1, MAX_DATA_BYTES)
    return request('read', id, r, { offset: volumeSize - length + 1 + r.int(2 ** 40), length })
  },
  'read-in-range': (r: Rng, id: number) => {
    const length = r.pick([0, 1, 4096, 65536, MAX_DATA_BYTES])
    return request('read', id, r, { offset: r.int(volumeSize - length + 1), length })
  },
  'digest-misaligned-offset': (r: Rng, id: number) =>
    request('digest', id, r, { offset: BLOCK_SIZE * r.int(1000) + r.range(1, BLOCK_SIZE - 1), length: BLOCK_SIZE * r.range(1, 64) }),
  'digest-past-end': (r: Rng, id: number) =>
    request('digest', id, r, { offset: volumeSize - BLOCK_SIZE * r.int(4), length: BLOCK_SIZE * r.range(5, 256) }),
  'open-conflict': (r: Rng, id: number) =>
    request('open', id, r, { epoch: r.int(epoch + 1), size: r.pick([0, 4096, volumeSize * 2, volumeSize - 4096]) }),
  'create-existing': (r: Rng, id: number) =>
    request('create', id, r, { size: r.pick([volumeSize, 4096, volumeSize * 4]) }),
  'drop-listed': (r: Rng, id: number) => request('drop', id, r),
  ping: (r: Rng, id: number) => ({ t: 'ping', id, sent: r.int(1e9) }),
} as const

type RefusedKind = keyof typeof REFUSED

/** How the replica must answer each kind: an error code, or ok. */
const ANSWERS: Record<RefusedKind, readonly string[]> = {
  'stale-epoch': ['STALE_EPOCH'],
  'future-epoch': ['STALE_EPOCH'],
  // A drop of a replica this node does not hold succeeds: there is nothing to remove. A
  // create or drop comes with no grant in the kvdb (src/replicas/grants.ts): refused.
  'unknown-volume': ['UNKNOWN_VOLUME', 'ok', 'NOT_COORDINATOR'],
  'write-past-end': ['INVALID_ARGUMENT'],
  'read-past-end': ['INVALID_ARGUMENT'],
  'read-in-range': ['ok'],
  'digest-misaligned-offset': ['INVALID_ARGUMENT'],
  'digest-past-end': ['INVALID_ARGUMENT'],
  'open-conflict': ['CONFLICT'],
  // No node holds a grant for the fuzzer's creates and drops: every one is refused first.
  'create-existing': ['NOT_COORDINATOR'],
  'drop-listed': ['NOT_COORDINATOR'],
  ping: [],
}

/** Ways to break a frame; `mutate` returns the bytes to send. */
function mutate(r: Rng, frame: Record<string, unknown>): { kind: string; bytes: Buffer } {
  const how = r.weighted({ 'bit-flip': 6, 'byte-set': 3, truncate: 3, extend: 2, splice: 2, 'type-swap': 5, 'huge-number': 4, 'negative-number': 3, 'unknown-t': 2, 'wrong-v': 2, 'drop-field': 2, 'extra-field': 2 })
  const fields = Object.keys(frame).filter((k) => k !== 't')
  const copy = { ...frame }
  switch (how) {
    case 'bit-flip': {
      const b = Buffer.from(pack(frame))
      for (let i = r.range(1, 8); i > 0; i--) {
        const at = r.int(b.length)
        b[at] = b[at]! ^ (1 << r.int(8))
      }
      return { kind: how, bytes: b }
    }
    case 'byte-set': {
      const b = Buffer.from(pack(frame))
      for (let i = r.range(1, 4); i > 0; i--) b[r.int(b.length)] = r.int(256)
      return { kind: how, bytes: b }
    }
    case 'truncate': {
      const b = pack(frame)
      return { kind: how, bytes: b.subarray(0, r.int(b.length)) }
    }
    case 'extend':
      return { kind: how, bytes: Buffer.concat([pack(frame), r.bytes(r.range(1, 64))]) }
    case 'splice': {
      const b = pack(frame)
      const at = r.int(b.length)
      return { kind: how, bytes: Buffer.concat([b.subarray(0, at), b.subarray(r.int(b.length))]) }
    }
    case 'type-swap': {
      const k = r.pick(fields)
      copy[k] = r.pick<unknown>(['1', true, false, null, [1, 2], { x: 1 }, 1.5, Buffer.from('x'), new Date(0), new Map([[1, 2]]), '', 'x'.repeat(300)])
      return { kind: how, bytes: pack(copy) }
    }
    case 'huge-number': {
      const k = r.pick(fields.filter((x) => typeof frame[x] === 'number').concat(['id']))
      copy[k] = r.pick<unknown>([2 ** 53, 2 ** 53 + 2, 2 ** 64, 18446744073709551615n, Number.MAX_VALUE, Infinity, NaN, 1e300, MAX_DATA_BYTES + 1, MAX_FRAME_BYTES * 4])
      return { kind: how, bytes: pack(copy) }
    }
    case 'negative-number': {
      const k = r.pick(fields.filter((x) => typeof frame[x] === 'number').concat(['id']))
      copy[k] = r.pick<unknown>([-1, -4096, -(2 ** 31), -(2 ** 53), -0.5, -9223372036854775808n])
      return { kind: how, bytes: pack(copy) }
    }
    case 'unknown-t':
      copy['t'] = r.pick<unknown>(['resync', 'WRITE', 'write ', '', 'ack2', '__proto__', 'constructor', 'x'.repeat(200), 7, null])
      return { kind: how, bytes: pack(copy) }
    case 'wrong-v':
      copy['v'] = r.pick<unknown>([0, 2, PROTOCOL_VERSION + 1, -1, '1', 2 ** 40])
      return { kind: how, bytes: pack(copy) }
    case 'drop-field':
      delete copy[r.pick(fields)]
      return { kind: how, bytes: pack(copy) }
    case 'extra-field':
      // defineProperty: an own "__proto__" key, as a decoded map would have, not a new prototype.
      Object.defineProperty(copy, r.pick(['extra', '__proto__', 'v', 'ok', 'data', 'constructor']), {
        value: r.pick<unknown>([1, 'x', Buffer.alloc(4)]), enumerable: true, writable: true, configurable: true,
      })
      return { kind: how, bytes: pack(copy) }
  }
}

/** Whether the server would treat these bytes as a request it runs, and whether running it could change the replica. */
function classify(bytes: Buffer): { frame?: Frame; request: boolean; harmful: boolean } {
  let frame: Frame
  try {
    frame = decodeFrame(bytes)
  } catch {
    return { request: false, harmful: false }
  }
  if (!isRequest(frame)) return { frame, request: false, harmful: false }
  return { frame, request: true, harmful: harmful(frame) }
}

/** A request the replica should carry out, which would change its files or its epoch. */
function harmful(f: RequestFrame): boolean {
  if (f.vol !== volumeId) return false
  if (f.t === 'write') return f.epoch === epoch && f.offset + f.data.length <= volumeSize
  if (f.t === 'open') return f.epoch > epoch
  return false
}

// ---------------------------------------------------------------- connections

interface Received { frames: Frame[]; undecodable: number; closed: boolean; closeCode: number | undefined }

/** A WebSocket to the target's peer port that records what comes back. */
class Conn {
  readonly ws: WebSocket
  readonly got: Received = { frames: [], undecodable: 0, closed: false, closeCode: undefined }
  readonly opened: Promise<boolean>
  #waiters: Array<() => void> = []

  constructor(port: number) {
    this.ws = new WebSocket(`ws://127.0.0.1:${port}${PEER_PATH}`, { perMessageDeflate: false, maxPayload: 2 * MAX_FRAME_BYTES, handshakeTimeout: REPLY_TIMEOUT_MS })
    this.opened = new Promise((resolve) => {
      this.ws.once('open', () => resolve(true))
      this.ws.once('close', () => resolve(false))
    })
    this.ws.on('message', (data: Buffer) => {
      try {
        this.got.frames.push(decodeFrame(data))
      } catch {
        this.got.undecodable++
      }
      this.#wake()
    })
    this.ws.on('error', () => undefined)
    this.ws.on('close', (code) => {
      this.got.closed = true
      this.got.closeCode = code
      this.#wake()
    })
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w()
  }

  send(bytes: Buffer | string): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes)
  }

  /** Waits until `cond` holds or the connection closes or time runs out; returns `cond()`. */
  async until(cond: () => boolean, timeoutMs = REPLY_TIMEOUT_MS): Promise<boolean> {
    const end = Date.now() + timeoutMs
    while (!cond() && !this.got.closed && Date.now() < end) {
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve)
        setTimeout(resolve, Math.min(100, end - Date.now()))
      })
    }
    return cond()
  }

  end(): void {
    this.ws.terminate()
  }
}

function errorCodes(got: Received): string[] {
  return got.frames.filter((f): f is Extract<Frame, { t: 'error' }> => f.t === 'error').map((f) => f.code)
}

function noteEnd(caseNo: number, scenario: string, conn: Conn): void {
  const codes = errorCodes(conn.got)
  if (codes.length > 0) for (const c of codes) outcomes.add(`error frame ${c}`)
  else if (conn.got.closed) outcomes.add(`closed ${conn.got.closeCode ?? '?'}`)
  if (!conn.got.closed) problem(caseNo, `${scenario}: the server did not close the link after a frame that breaks the protocol`)
}

async function handshake(conn: Conn, r: Rng): Promise<boolean> {
  if (!(await conn.opened)) return false
  const nodeId = r.pick(['fuzzer', 'node-a', 'node-b', 'x'])
  const nonce = r.bytes(32)
  conn.send(encodeFrame({ t: 'hello', v: PROTOCOL_VERSION, nodeId, clusterId: cluster.clusterId, nonce }))
  sent.add('handshake: hello')
  if (!(await conn.until(() => conn.got.frames.some((f) => f.t === 'challenge')))) return false
  const ch = conn.got.frames.find((f) => f.t === 'challenge')
  if (ch?.t !== 'challenge') return false
  const parties: HandshakeParties = { clusterId: cluster.clusterId, clientNodeId: nodeId, serverNodeId: 'node-b', clientNonce: nonce, serverNonce: ch.nonce }
  conn.send(encodeFrame({ t: 'auth', proof: computeProof(cluster.secret, 'client', parties) }))
  sent.add('handshake: auth')
  return conn.until(() => conn.got.frames.some((f) => f.t === 'ready'))
}

// ---------------------------------------------------------------- scenarios

/** Authenticated: refused (and harmless) requests, then maybe one frame that breaks the protocol. */
async function authenticatedCase(caseNo: number, r: Rng): Promise<void> {
  const conn = new Conn(target().peerPort)
  try {
    if (!(await handshake(conn, r))) {
      problem(caseNo, `the real handshake failed (${errorCodes(conn.got).join(',') || 'no reply'})`)
      return
    }
    /** Request id -> what was sent (a kind of REFUSED, or "mutated"). */
    const expected = new Map<number, { kind: RefusedKind | 'mutated'; t: string }>()
    // A mutated id may repeat another request's: such acks cannot be told apart, so they go unchecked.
    const expect = (id: number, what: { kind: RefusedKind | 'mutated'; t: string }) =>
      expected.set(id, expected.has(id) ? { kind: 'mutated', t: 'ambiguous' } : what)
    let id = 1
    const n = r.range(1, 40)
    for (let i = 0; i < n; i++) {
      const kind = r.weighted<RefusedKind | 'mutated'>({
        'stale-epoch': 4, 'future-epoch': 3, 'unknown-volume': 4, 'write-past-end': 4, 'read-past-end': 3, 'read-in-range': 2,
        'digest-misaligned-offset': 2, 'digest-past-end': 2, 'open-conflict': 2, 'create-existing': 1, 'drop-listed': 1, ping: 1, mutated: 6,
      })
      if (kind === 'mutated') {
        // A mutation that still decodes as a request or ping goes in the stream; one that breaks it waits for the end.
        const base = REFUSED[r.pick(Object.keys(REFUSED) as RefusedKind[])](r, id++)
        const m = mutate(r, base)
        const c = classify(m.bytes)
        if (c.harmful) { sent.add('auth: skipped (would change the replica)'); continue }
        if (!c.frame || !(c.request || c.frame.t === 'ping')) continue
        conn.send(m.bytes)
        sent.add(`auth: mutated ${m.kind} (still valid)`)
        if (c.request) expect((c.frame as RequestFrame).id, { kind: 'mutated', t: c.frame.t })
        continue
      }
      const frame = REFUSED[kind](r, id++)
      const bytes = pack(frame)
      const c = classify(bytes)
      if (!c.frame) { problem(caseNo, `generator made an invalid ${kind} frame`); continue }
      if (c.harmful) { problem(caseNo, `generator made a harmful ${kind} frame`); continue }
      conn.send(bytes)
      sent.add(`auth: ${kind}`)
      if (c.request) expect((c.frame as RequestFrame).id, { kind, t: c.frame.t })
    }
    const acked = () => {
      const ids = new Set<number>()
      for (const f of conn.got.frames) if (f.t === 'ack') ids.add(f.id)
      return [...expected.keys()].every((x) => ids.has(x))
    }
    if (!(await conn.until(acked))) {
      problem(caseNo, `${conn.got.closed ? 'link closed' : 'timed out'} before every valid request was acknowledged (${errorCodes(conn.got).join(',')})`)
      return
    }
    for (const f of conn.got.frames) {
      if (f.t !== 'ack') continue
      const what = expected.get(f.id)
      const answer = f.ok ? 'ok' : f.code
      outcomes.add(`ack ${what?.kind ?? '?'} ${what?.t ?? '?'}: ${answer}`)
      if (f.ok && what?.t === 'write') problem(caseNo, `a write (#${f.id}) was acknowledged as done`)
      if (what && what.kind !== 'mutated' && !ANSWERS[what.kind].includes(answer)) {
        problem(caseNo, `${what.kind} ${what.t} #${f.id} answered ${answer}${f.ok ? '' : `: ${f.message}`}, expected ${ANSWERS[what.kind].join(' or ')}`)
      }
    }
    if (r.chance(0.3)) { outcomes.add('closed by the fuzzer'); return }
    // The end: one frame that breaks the protocol.
    const end = r.weighted({ mutated: 10, 'path-traversal': 2, 'read-huge': 2, 'digest-misaligned-length': 2, 'unexpected-frame': 2, random: 2, text: 1, oversized: 1 })
    let bytes: Buffer | string
    let kind = end as string
    switch (end) {
      case 'mutated': {
        let m: { kind: string; bytes: Buffer } | undefined
        for (let tries = 0; tries < 20 && m === undefined; tries++) {
          const cand = mutate(r, REFUSED[r.pick(Object.keys(REFUSED) as RefusedKind[])](r, id))
          const c = classify(cand.bytes)
          if (!c.frame || !(c.request || c.frame.t === 'ping')) m = cand
        }
        if (m === undefined) return
        bytes = m.bytes
        kind = `mutated ${m.kind}`
        break
      }
      case 'path-traversal':
        bytes = pack(request(r.pick(['drop', 'open', 'create', 'write'] as const), id, r, { vol: r.pick(['.', '..']) }))
        break
      case 'read-huge':
        bytes = pack(request('read', id, r, { length: MAX_DATA_BYTES + 1 + r.int(2 ** 52) }))
        break
      case 'digest-misaligned-length':
        bytes = pack(request('digest', id, r, { length: BLOCK_SIZE * r.int(64) + r.range(1, BLOCK_SIZE - 1) }))
        break
      case 'unexpected-frame':
        bytes = pack(r.pick<Record<string, unknown>>([
          { t: 'hello', v: PROTOCOL_VERSION, nodeId: 'node-a', clusterId: cluster.clusterId, nonce: r.bytes(32) },
          { t: 'challenge', v: PROTOCOL_VERSION, nodeId: 'node-a', nonce: r.bytes(32), proof: r.bytes(32) },
          { t: 'auth', proof: r.bytes(32) }, { t: 'ready' }, { t: 'ack', id: 1, ok: true }, { t: 'pong', id: 1, sent: 1 },
        ]))
        break
      case 'random':
        bytes = r.bytes(r.range(1, 4096))
        break
      case 'text':
        bytes = r.bytes(r.range(1, 256)).toString('latin1')
        break
      case 'oversized':
        bytes = Buffer.alloc(MAX_FRAME_BYTES + 1 + r.int(MAX_DATA_BYTES), r.int(256))
        break
    }
    const c = typeof bytes === 'string' ? { request: false, harmful: false } : classify(bytes)
    if (c.harmful) { sent.add('auth: skipped (would change the replica)'); return }
    if (c.request) return // a mutation that still makes a valid request is no protocol break
    conn.send(bytes)
    sent.add(`auth: ${kind}`)
    await conn.until(() => false, REPLY_TIMEOUT_MS)
    noteEnd(caseNo, `auth ${kind}`, conn)
  } finally {
    conn.end()
  }
}

/** Before the handshake: everything but a proper hello + auth is refused, and nothing is acknowledged. */
async function unauthenticatedCase(caseNo: number, r: Rng): Promise<void> {
  const conn = new Conn(target().peerPort)
  try {
    if (!(await conn.opened)) { problem(caseNo, 'the peer port refused a WebSocket'); return }
    const kind = r.weighted({
      request: 5, random: 4, 'oversized-handshake': 2, oversized: 1, text: 1, 'mutated-hello': 5, 'wrong-version': 2,
      'wrong-cluster': 2, 'bad-proof': 3, 'request-after-hello': 2, 'mutated-request': 3,
    })
    const hello = () => ({ t: 'hello', v: PROTOCOL_VERSION, nodeId: r.pick(['fuzzer', 'node-a']), clusterId: cluster.clusterId, nonce: r.bytes(32) })
    const anyRequest = () => request(r.pick(REQUEST_KINDS), r.range(1, 1000), r, r.chance(0.5) ? {} : { epoch: epoch + 1 })
    switch (kind) {
      case 'request': conn.send(pack(anyRequest())); break
      case 'random': conn.send(r.bytes(r.range(1, MAX_HANDSHAKE_FRAME_BYTES))); break
      case 'oversized-handshake': conn.send(r.bytes(r.range(MAX_HANDSHAKE_FRAME_BYTES + 1, 256 * 1024))); break
      case 'oversized': conn.send(Buffer.alloc(MAX_FRAME_BYTES + 1 + r.int(MAX_DATA_BYTES), 7)); break
      case 'text': conn.send(r.bytes(r.range(1, 512)).toString('latin1')); break
      case 'mutated-hello': conn.send(mutate(r, hello()).bytes); break
      case 'wrong-version': conn.send(pack({ ...hello(), v: r.pick([0, 2, 99, 2 ** 31]) })); break
      case 'wrong-cluster': conn.send(pack({ ...hello(), clusterId: r.pick(['other', 'default', cluster.clusterId + 'x']) })); break
      case 'mutated-request': conn.send(mutate(r, anyRequest()).bytes); break
      case 'request-after-hello':
      case 'bad-proof': {
        conn.send(pack(hello()))
        await conn.until(() => conn.got.frames.some((f) => f.t === 'challenge'))
        conn.send(pack(kind === 'bad-proof' ? { t: 'auth', proof: r.bytes(32) } : anyRequest()))
        break
      }
    }
    sent.add(`unauth: ${kind}`)
    // A mutated hello may still be a valid hello; the server then waits for the proof.
    const challenged = () => kind === 'mutated-hello' && conn.got.frames.some((f) => f.t === 'challenge')
    await conn.until(challenged)
    if (conn.got.frames.some((f) => f.t === 'ack' || f.t === 'ready')) problem(caseNo, `unauth ${kind}: got ${conn.got.frames.map((f) => f.t).join(',')} without a handshake`)
    if (challenged() && !conn.got.closed) { outcomes.add('challenge (hello survived the mutation)'); return }
    noteEnd(caseNo, `unauth ${kind}`, conn)
  } finally {
    conn.end()
  }
}

/** Raw TCP: bytes that are not HTTP, broken upgrade requests, or broken WebSocket framing after a good upgrade. */
async function tcpCase(caseNo: number, r: Rng): Promise<void> {
  const kind = r.weighted({ random: 3, 'tls-hello': 1, 'http-garbage': 3, 'ws-bad-frame': 6 })
  const upgrade = (mangle: boolean) => {
    const lines = [
      `GET ${PEER_PATH} HTTP/1.1`, 'Host: 127.0.0.1', 'Upgrade: websocket', 'Connection: Upgrade',
      `Sec-WebSocket-Key: ${r.bytes(16).toString('base64')}`, 'Sec-WebSocket-Version: 13',
    ]
    if (mangle) {
      const i = r.int(lines.length)
      const m = r.int(5)
      if (m === 0) lines.splice(i, 1)
      else if (m === 1) lines[i] = r.bytes(r.range(1, 80)).toString('latin1')
      else if (m === 2) lines[i] = `${lines[i]}${'x'.repeat(r.pick([10, 20_000]))}`
      else if (m === 3) lines.push(`X-${'a'.repeat(r.range(1, 100))}: ${'b'.repeat(r.pick([1, 70_000]))}`)
      else lines[0] = r.pick(['GET / HTTP/1.1', `POST ${PEER_PATH} HTTP/1.1`, `GET ${PEER_PATH} HTTP/9.9`, 'BREW /pot HTCPCP/1.0'])
    }
    return Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1')
  }
  let bytes: Buffer
  let label: string = kind
  switch (kind) {
    case 'random': bytes = r.bytes(r.range(1, 2048)); break
    case 'tls-hello': bytes = Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), r.bytes(r.range(2, 300))]); break
    case 'http-garbage': bytes = upgrade(true); break
    case 'ws-bad-frame': {
      const w = wsBadFrame(r)
      label = `ws-bad-frame ${w.kind}`
      bytes = Buffer.concat([upgrade(false), w.bytes])
      break
    }
  }
  sent.add(`tcp: ${label}`)
  const reply = await new Promise<{ data: Buffer; closed: boolean }>((resolve) => {
    const s = net.connect(target().peerPort, '127.0.0.1')
    const chunks: Buffer[] = []
    let size = 0
    const linger = r.chance(0.5)
    const timer = setTimeout(() => { s.destroy(); resolve({ data: Buffer.concat(chunks), closed: false }) }, linger ? TCP_LINGER_MS * 4 : REPLY_TIMEOUT_MS)
    s.on('connect', () => {
      s.write(bytes)
      // Half the time say we are done, so the server need not wait for more.
      if (!linger) s.end()
    })
    s.on('data', (d: Buffer) => { if (size < 65536) { chunks.push(d); size += d.length } })
    s.on('close', () => { clearTimeout(timer); resolve({ data: Buffer.concat(chunks), closed: true }) })
    s.on('error', () => undefined)
  })
  outcomes.add(`tcp ${describeTcpReply(reply.data, reply.closed)}`)
}

/** A WebSocket frame from client to server that breaks RFC 6455 or our limits. */
function wsBadFrame(r: Rng): { kind: string; bytes: Buffer } {
  const frame = (first: number, payload: Buffer, masked = true, lenBytes?: Buffer) => {
    const len = lenBytes ?? (payload.length < 126 ? Buffer.alloc(0) : payload.length < 65536 ? Buffer.from([payload.length >> 8, payload.length & 0xff]) : (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(payload.length)); return b })())
    const code = lenBytes ? (lenBytes.length === 2 ? 126 : 127) : payload.length < 126 ? payload.length : payload.length < 65536 ? 126 : 127
    const mask = masked ? r.bytes(4) : Buffer.alloc(0)
    const body = Buffer.from(payload)
    if (masked) for (let i = 0; i < body.length; i++) body[i]! ^= mask[i % 4]!
    return Buffer.concat([Buffer.from([first, (masked ? 0x80 : 0) | code]), len, mask, body])
  }
  const kind = r.pick(['rsv-bits', 'reserved-opcode', 'unmasked', 'huge-length', 'over-max-length', 'fragmented-control', 'long-ping', 'lone-continuation', 'bad-close', 'random-after-upgrade', 'garbage-message'] as const)
  switch (kind) {
    case 'rsv-bits': return { kind, bytes: frame(0x82 | (r.range(1, 7) << 4), r.bytes(8)) }
    case 'reserved-opcode': return { kind, bytes: frame(0x80 | r.pick([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), r.bytes(8)) }
    case 'unmasked': return { kind, bytes: frame(0x82, pack({ t: 'hello' }), false) }
    case 'huge-length': {
      const b = Buffer.alloc(8)
      b.writeBigUInt64BE(r.pick([2n ** 63n - 1n, 2n ** 53n, 2n ** 64n - 1n]))
      return { kind, bytes: frame(0x82, Buffer.alloc(0), true, b) }
    }
    case 'over-max-length': {
      const b = Buffer.alloc(8)
      b.writeBigUInt64BE(BigInt(MAX_FRAME_BYTES + 1 + r.int(1 << 30)))
      return { kind, bytes: frame(0x82, r.bytes(16), true, b) }
    }
    case 'fragmented-control': return { kind, bytes: frame(0x09, r.bytes(4)) }
    case 'long-ping': return { kind, bytes: frame(0x89, r.bytes(r.range(126, 1000))) }
    case 'lone-continuation': return { kind, bytes: frame(0x80, r.bytes(10)) }
    case 'bad-close': return { kind, bytes: frame(0x88, r.pick([Buffer.from([3]), Buffer.from([0x03, 0xe7]), Buffer.from([0x0b, 0xb8, 0xff, 0xfe])])) }
    case 'random-after-upgrade': return { kind, bytes: r.bytes(r.range(1, 512)) }
    case 'garbage-message': return { kind, bytes: frame(0x82, r.bytes(r.range(1, 200))) }
  }
}

function describeTcpReply(data: Buffer, closed: boolean): string {
  const text = data.toString('latin1')
  const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]
  let ws = ''
  const head = text.indexOf('\r\n\r\n')
  if (status === '101' && head >= 0) {
    const rest = data.subarray(head + 4)
    if (rest[0] === 0x82) {
      try {
        const len = rest[1]! & 0x7f
        const start = len === 126 ? 4 : 2
        const f = decodeFrame(rest.subarray(start, start + (len === 126 ? rest.readUInt16BE(2) : len)))
        ws = f.t === 'error' ? ` error frame ${f.code}` : ` ${f.t}`
      } catch {
        ws = ' binary'
      }
    } else if (rest[0] === 0x88) {
      ws = ` close ${rest.length >= 4 ? rest.readUInt16BE(2) : ''}`.trimEnd()
    }
  }
  return `${status ? `HTTP ${status}` : data.length > 0 ? 'non-HTTP reply' : 'no reply'}${ws}${closed ? '' : ' (left open)'}`
}

// ---------------------------------------------------------------- the test

test.before(async () => {
  // The cases speak the peer protocol below and inside WebSocket, so the port runs without
  // its default TLS-PSK layer here (cluster-peers.test.ts and peer-psk.test.ts cover that layer).
  cluster = await startCluster(['node-a', 'node-b'], { env: { PXD_PEER_PLAINTEXT: '1' } })
  const a = cluster.node('node-a')
  await call(a, '/VolumeDriver.Create', { Name: 'fuzzed', Opts: { size: '32M', repl: '2' } })
  const mp = (await call(a, '/VolumeDriver.Mount', { Name: 'fuzzed', ID: 'w' })).Mountpoint as string
  const data = randomBytes(FILE_BYTES)
  fileSha = sha(data)
  await writeSynced(path.join(mp, 'f'), data)
  await call(a, '/VolumeDriver.Unmount', { Name: 'fuzzed', ID: 'w' })
  volumeId = (await new ApiClient(a.apiUrl).inspectVolume('fuzzed')).id
  const superblock = JSON.parse(await fs.readFile(path.join(target().dataDir, 'replicas', volumeId, 'super.json'), 'utf8')) as { epoch: number; size: number }
  epoch = superblock.epoch
  volumeSize = superblock.size
  if (epoch < 1) throw new Error(`replica epoch ${epoch}: expected the mount to have raised it`)
  replicasBefore = await replicaDigests()
})

test.after.always(async () => {
  await cluster?.stop()
})

test('generated frames at a live peer port are refused, the node keeps serving, and no replica changes', async (t) => {
  t.timeout(120_000)
  const replay = `PXD_FUZZ_SEED=${SEED}`
  t.log(`seed ${SEED} (replay with ${replay}); up to ${DURATION_MS} ms and ${MAX_CASES} cases; volume ${volumeId} epoch ${epoch} size ${volumeSize}`)
  console.log(`peer-fuzz: ${replay}`)
  const started = Date.now()
  const deadline = started + DURATION_MS
  let nextCase = 0
  const worker = async () => {
    while (Date.now() < deadline && nextCase < MAX_CASES && sent.total < MAX_MESSAGES) {
      const caseNo = nextCase++
      const r = new Rng(SEED, caseNo)
      const scenario = r.weighted({ authenticated: 10, unauthenticated: 6, tcp: 3 })
      cases.add(scenario)
      try {
        if (scenario === 'authenticated') await authenticatedCase(caseNo, r)
        else if (scenario === 'unauthenticated') await unauthenticatedCase(caseNo, r)
        else await tcpCase(caseNo, r)
      } catch (err) {
        problem(caseNo, `${scenario}: the fuzzer itself failed: ${(err as Error).stack ?? String(err)}`)
      }
      if (target().child.exitCode !== null || target().child.signalCode !== null) {
        problem(caseNo, `node-b exited (${target().child.exitCode ?? target().child.signalCode})`)
        return
      }
    }
  }
  await Promise.all(Array.from({ length: WORKERS }, worker))
  const elapsed = Date.now() - started
  t.log(`${nextCase} cases in ${elapsed} ms, ${sent.total} messages sent`)
  t.log(`cases by scenario:\n${cases.table()}`)
  t.log(`messages by kind:\n${sent.table()}`)
  t.log(`outcomes:\n${outcomes.table()}`)
  t.deepEqual(problems, [], `seed ${SEED}: replay with ${replay}`)
  t.true(nextCase >= 100, `only ${nextCase} cases ran`)

  // Still serving: the plugin answers, the peer port serves a real peer, a mount reads the data back.
  const b = target()
  t.is(b.child.exitCode, null)
  t.deepEqual(await replicaDigests(), replicasBefore, `seed ${SEED}: a replica file changed`)
  const list = await call(b, '/VolumeDriver.List', {})
  t.deepEqual((list.Volumes as Array<{ Name: string }>).map((v) => v.Name), ['fuzzed'])
  const peer = new PeerLinks({ nodeId: 'node-a', clusterId: cluster.clusterId, secret: cluster.secret, log })
  try {
    const block = await peer.link('node-b', `127.0.0.1:${b.peerPort}`).request({ t: 'read', vol: volumeId, epoch, offset: 0, length: 4096 })
    const onDisk = await fs.readFile(path.join(b.dataDir, 'replicas', volumeId, 'data'))
    t.deepEqual(block, onDisk.subarray(0, 4096))
  } finally {
    await peer.close()
  }
  const mp = (await call(b, '/VolumeDriver.Mount', { Name: 'fuzzed', ID: 'check' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mp, 'f'))), fileSha)
  await call(b, '/VolumeDriver.Unmount', { Name: 'fuzzed', ID: 'check' })
})
