/**
 * In-process throughput of the addon's crc32c (what every 4 KiB block of a volume pays on
 * write and read) next to memcpy on the same 1 MiB buffer, as the yardstick of "as fast as
 * touching the bytes at all".
 */
import { randomFillSync } from 'node:crypto'
import { native } from '../src/native/binding'
import { median } from './stats'

export type CrcKernelId = 'crc32c' | 'crc32cHardware' | 'crc32cSoftware' | 'memcpyCopy' | 'memcpySet'

export interface CrcKernelResult {
  id: CrcKernelId
  label: string
  /** GB/s (10^9 bytes per second), one per run; null when this CPU cannot run it. */
  runs: number[] | null
  median: number | null
  note?: string
}

export interface CrcResults {
  bufferBytes: number
  runMs: number
  hardwareCrc32c: boolean
  kernels: CrcKernelResult[]
}

const BUFFER_BYTES = 1024 * 1024
const RUN_MS = 200

/** Sink for results so that no call can be optimised away. */
let sink = 0

export function measureCrc(runs: number): CrcResults {
  const src = Buffer.allocUnsafe(BUFFER_BYTES)
  randomFillSync(src)
  const dst = Buffer.allocUnsafe(BUFFER_BYTES)
  const hw = native.hasHardwareCrc32c()
  const kernels: Array<{ id: CrcKernelId; label: string; fn: (() => void) | null; note?: string }> = [
    { id: 'crc32c', label: 'crc32c (native.crc32c, as the store calls it)', fn: () => { sink ^= native.crc32c(src) } },
    hw
      ? { id: 'crc32cHardware', label: 'crc32c hardware (SSE4.2)', fn: () => { sink ^= native.crc32cHardware(src) } }
      : { id: 'crc32cHardware', label: 'crc32c hardware (SSE4.2)', fn: null, note: 'this CPU has no crc32c instruction' },
    { id: 'crc32cSoftware', label: 'crc32c software', fn: () => { sink ^= native.crc32cSoftware(src) } },
    { id: 'memcpyCopy', label: 'memcpy (Buffer#copy)', fn: () => { sink ^= src.copy(dst) } },
    { id: 'memcpySet', label: 'memcpy (Uint8Array#set)', fn: () => { dst.set(src); sink ^= dst[BUFFER_BYTES - 1]! } },
  ]
  // The hardware and software paths must agree before their speed means anything.
  if (hw && native.crc32cHardware(src) !== native.crc32cSoftware(src)) {
    throw new Error('crc32c hardware and software paths disagree on the same buffer')
  }
  const results: CrcKernelResult[] = []
  for (const k of kernels) {
    if (!k.fn) {
      results.push({ id: k.id, label: k.label, runs: null, median: null, ...(k.note ? { note: k.note } : {}) })
      continue
    }
    timeFor(k.fn, 50) // warm up (JIT, caches, page faults on dst)
    const perRun: number[] = []
    for (let r = 0; r < runs; r++) {
      const { bytes, ns } = timeFor(k.fn, RUN_MS)
      perRun.push(bytes / ns) // bytes per ns = GB/s
    }
    results.push({ id: k.id, label: k.label, runs: perRun, median: median(perRun) })
  }
  if (sink === 0.5) console.error('') // keeps `sink` observable
  return { bufferBytes: BUFFER_BYTES, runMs: RUN_MS, hardwareCrc32c: hw, kernels: results }
}

/** Call fn over the 1 MiB buffer repeatedly for about `ms`; bytes processed and ns taken. */
function timeFor(fn: () => void, ms: number): { bytes: number; ns: number } {
  const budget = BigInt(ms) * 1_000_000n
  const start = process.hrtime.bigint()
  let calls = 0
  let elapsed = 0n
  do {
    for (let i = 0; i < 16; i++) fn()
    calls += 16
    elapsed = process.hrtime.bigint() - start
  } while (elapsed < budget)
  return { bytes: calls * BUFFER_BYTES, ns: Number(elapsed) }
}
