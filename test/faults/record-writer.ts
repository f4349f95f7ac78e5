/**
 * A workload whose every acknowledged write can be checked afterwards: record n goes to
 * offset n * size of FILE, as [n: 8 bytes][sha256 of the rest: 32 bytes][random payload],
 * followed by an fdatasync; only then does the writer print "ack n". It stops at the first
 * error ("error CODE") or after COUNT records (0: until killed).
 *   node record-writer.js FILE RECORD_BYTES COUNT [INTERVAL_MS [BATCH]]
 * With BATCH > 0, records go BATCH at a time with direct I/O (dd oflag=direct) and one fsync
 * at the end, acknowledged after it: the replicas hold each batch unflushed for a while,
 * which is what a power cut of a replica must not lose once the fsync returned.
 */
import { createHash, randomFillSync } from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { closeSync, fdatasyncSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const HEADER = 8 + 32

export function makeRecord(n: number, size: number): Buffer {
  const rec = Buffer.alloc(size)
  rec.writeBigUInt64BE(BigInt(n), 0)
  randomFillSync(rec, HEADER)
  createHash('sha256').update(rec.subarray(HEADER)).digest().copy(rec, 8)
  return rec
}

/** Which of the acknowledged records are missing or wrong in a file. */
export function checkRecords(file: string, size: number, acked: Iterable<number>): { checked: number; lost: number[] } {
  let data: Buffer
  try {
    data = readFileSync(file)
  } catch (err) {
    // A file whose creation was never made durable may be gone; then so is every record in it.
    if ((err as { code?: string }).code !== 'ENOENT') throw err
    data = Buffer.alloc(0)
  }
  const lost: number[] = []
  let checked = 0
  for (const n of acked) {
    checked++
    const rec = data.subarray(n * size, (n + 1) * size)
    const ok = rec.length === size && rec.readBigUInt64BE(0) === BigInt(n) &&
      createHash('sha256').update(rec.subarray(HEADER)).digest().equals(rec.subarray(8, HEADER))
    if (!ok) lost.push(n)
  }
  return { checked, lost }
}

async function main(): Promise<void> {
  const [file, sizeArg, countArg, intervalArg, batchArg] = process.argv.slice(2)
  if (!file || !sizeArg || !countArg) throw new Error('usage: record-writer FILE RECORD_BYTES COUNT [INTERVAL_MS [BATCH]]')
  const size = Number(sizeArg)
  const count = Number(countArg)
  const interval = Number(intervalArg ?? 0)
  const batch = Number(batchArg ?? 0)
  if (batch > 0) return writeBatches(file, size, count, interval, batch)
  let fd: number
  try {
    fd = openSync(file, 'a+')
    closeSync(fd)
    fd = openSync(file, 'r+')
  } catch (err) {
    process.stdout.write(`error ${(err as { code?: string }).code ?? 'EIO'}\n`)
    return
  }
  for (let n = 0; count === 0 || n < count; n++) {
    try {
      writeSync(fd, makeRecord(n, size), 0, size, n * size)
      fdatasyncSync(fd)
    } catch (err) {
      process.stdout.write(`error ${(err as { code?: string }).code ?? 'EIO'}\n`)
      return
    }
    process.stdout.write(`ack ${n}\n`)
    if (interval > 0) await new Promise((r) => setTimeout(r, interval))
  }
  closeSync(fd)
}

async function writeBatches(file: string, size: number, count: number, interval: number, batch: number): Promise<void> {
  const staging = path.join(os.tmpdir(), `record-writer-${process.pid}.bin`)
  try {
    for (let n = 0; count === 0 || n < count; n += batch) {
      writeFileSync(staging, Buffer.concat(Array.from({ length: batch }, (_, i) => makeRecord(n + i, size))))
      const dd = spawnSync('dd', [`if=${staging}`, `of=${file}`, `bs=${size}`, `seek=${n}`, 'oflag=direct', 'conv=notrunc,fsync', 'status=none'], { encoding: 'utf8' })
      if (dd.status !== 0) {
        process.stdout.write(`error ${/Input\/output/.test(dd.stderr) ? 'EIO' : `dd:${dd.status ?? dd.signal}`}\n`)
        return
      }
      process.stdout.write(Array.from({ length: batch }, (_, i) => `ack ${n + i}\n`).join(''))
      if (interval > 0) await new Promise((r) => setTimeout(r, interval))
    }
  } finally {
    rmSync(staging, { force: true })
  }
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(String(err) + '\n')
    process.exit(1)
  })
}
