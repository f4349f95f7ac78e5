/** Run the record writer (test/faults/record-writer.ts) as its own process and keep what it acknowledged. */
import { spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import { guardProcess, releaseProcess } from './exit-guard'
import { stopChild } from './mount-namespace'
import { pluginOk } from './volume-io'
import { checkRecords } from '../faults/record-writer'

export { checkRecords }

const WRITER = path.join(__dirname, '..', 'faults', 'record-writer.js')

export interface RecordWriter {
  /** Records whose fdatasync returned. */
  readonly acked: Set<number>
  /** The error that stopped it, if one did. */
  readonly error: string | undefined
  /** Resolves when the writer has ended (on its own, or after stop). */
  readonly done: Promise<void>
  /** Wait until at least n records were acknowledged (or the writer ended). */
  waitFor(n: number, timeoutMs?: number): Promise<void>
  stop(): Promise<void>
}

/** `batch`: that many records at a time with direct I/O and one fsync (record-writer.ts). */
export function startRecordWriter(file: string, o: { recordBytes?: number; count?: number; intervalMs?: number; batch?: number } = {}): RecordWriter {
  const child: ChildProcess = spawn(process.execPath, [WRITER, file, String(o.recordBytes ?? 4096), String(o.count ?? 0), String(o.intervalMs ?? 0), String(o.batch ?? 0)], { stdio: ['ignore', 'pipe', 'inherit'] })
  guardProcess(child.pid!)
  const acked = new Set<number>()
  let error: string | undefined
  let buffered = ''
  const waiters: Array<() => void> = []
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buffered += d
    let i: number
    while ((i = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, i)
      buffered = buffered.slice(i + 1)
      if (line.startsWith('ack ')) acked.add(Number(line.slice(4)))
      else if (line.startsWith('error ')) error = line.slice(6)
    }
    for (const w of waiters.splice(0)) w()
  })
  const done = new Promise<void>((resolve) => child.once('exit', () => {
    releaseProcess(child.pid!)
    for (const w of waiters.splice(0)) w()
    resolve()
  }))
  const ended = () => child.exitCode !== null || child.signalCode !== null
  return {
    acked,
    get error() { return error },
    done,
    waitFor: async (n, timeoutMs = 30_000) => {
      const deadline = Date.now() + timeoutMs
      while (acked.size < n && !ended()) {
        if (Date.now() > deadline) throw new Error(`the writer acknowledged ${acked.size} of ${n} records within ${timeoutMs} ms`)
        await new Promise<void>((resolve) => {
          waiters.push(resolve)
          setTimeout(resolve, 200)
        })
      }
    },
    stop: async () => { await stopChild(child, 5_000) },
  }
}

/**
 * Fail a volume over: unmount it (mount ID 'w') on `from`, mount it on `to` (ID 'r'), read
 * the acknowledged records of `file` there, unmount. Resolves to the records missing or wrong.
 */
export async function lostAfterFailover(
  volume: string, from: { pluginSocket: string }, to: { pluginSocket: string }, file: string, recordBytes: number, acked: Iterable<number>,
): Promise<number[]> {
  await pluginOk(from, '/VolumeDriver.Unmount', { Name: volume, ID: 'w' })
  const mountpoint = (await pluginOk(to, '/VolumeDriver.Mount', { Name: volume, ID: 'r' })).Mountpoint as string
  try {
    return checkRecords(path.join(mountpoint, file), recordBytes, acked).lost
  } finally {
    await pluginOk(to, '/VolumeDriver.Unmount', { Name: volume, ID: 'r' })
  }
}
