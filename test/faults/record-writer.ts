/**
 * A workload whose every acknowledged write can be checked afterwards: record n goes to
 * offset n * size of FILE, as [n: 8 bytes][sha256 of the rest: 32 bytes][random payload],
 * followed by an fdatasync; only then does the writer print "ack n". It stops at the first
 * error ("error CODE") or after COUNT records (0: until killed).
 *   node record-writer.js FILE RECORD_BYTES COUNT [INTERVAL_MS]
 */
import { createHash, randomFillSync } from 'node:crypto'
import { closeSync, fdatasyncSync, openSync, readFileSync, writeSync } from 'node:fs'

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
  const data = readFileSync(file)
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
  const [file, sizeArg, countArg, intervalArg] = process.argv.slice(2)
  if (!file || !sizeArg || !countArg) throw new Error('usage: record-writer FILE RECORD_BYTES COUNT [INTERVAL_MS]')
  const size = Number(sizeArg)
  const count = Number(countArg)
  const interval = Number(intervalArg ?? 0)
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

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(String(err) + '\n')
    process.exit(1)
  })
}
