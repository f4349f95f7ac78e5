/**
 * A process standing in for a container's application during a live restart:
 * `write FILE`: appends numbered 64-byte records to FILE, each fsynced before the next;
 * `write-at FILE`: the same records, each written at its place (pwrite), not appended;
 * `read FILE`: reads FILE whole, again and again, checking every record in it.
 * Either one runs until SIGTERM, then prints one JSON line: how many records (or reads),
 * the longest time one operation took (the I/O pause a restart caused), and every error.
 */
import { closeSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs'

export const RECORD_BYTES = 64

export function record(seq: number): string {
  return `record ${seq}`.padEnd(RECORD_BYTES - 1, '.') + '\n'
}

export interface RecordIoReport {
  ops: number
  maxOpMs: number
  errors: string[]
}

function main(): void {
  const [mode, file] = process.argv.slice(2)
  if ((mode !== 'write' && mode !== 'write-at' && mode !== 'read') || !file) {
    process.stderr.write('usage: record-io write|write-at|read FILE\n')
    process.exit(2)
  }
  const report: RecordIoReport = { ops: 0, maxOpMs: 0, errors: [] }
  let stop = false
  process.on('SIGTERM', () => { stop = true })
  const fd = mode === 'write' ? openSync(file, 'a') : mode === 'write-at' ? openSync(file, 'r+') : -1
  const step = (): void => {
    if (stop) {
      if (fd >= 0) closeSync(fd)
      process.stdout.write(JSON.stringify(report) + '\n')
      process.exit(0)
    }
    const start = performance.now()
    try {
      if (mode === 'write' || mode === 'write-at') {
        if (mode === 'write') writeSync(fd, record(report.ops))
        else writeSync(fd, record(report.ops), report.ops * RECORD_BYTES)
        fsyncSync(fd)
      } else {
        const text = readFileSync(file, 'latin1')
        const whole = text.length - (text.length % RECORD_BYTES)
        for (let at = 0, seq = 0; at < whole; at += RECORD_BYTES, seq++) {
          if (text.slice(at, at + RECORD_BYTES) !== record(seq)) throw new Error(`record ${seq} reads back wrong`)
        }
      }
      report.ops++
    } catch (err) {
      if (report.errors.length < 20) report.errors.push((err as Error).message)
    }
    report.maxOpMs = Math.max(report.maxOpMs, performance.now() - start)
    setTimeout(step, mode === 'read' ? 20 : 2)
  }
  step()
}

if (require.main === module) main()
