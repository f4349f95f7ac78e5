/**
 * An application standing in for a container's during a live restart: a writer of
 * fsynced records and a reader of them (record-io.ts, separate processes), and the checks
 * made afterwards; also a systemctl stand-in that tells pxd which job the service runs.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { REPO_ROOT } from './paths'
import { RECORD_BYTES, record, type RecordIoReport } from './record-io'

export interface App { writer: ChildProcess; reader: ChildProcess; file: string }

/** Writer and reader of `<dir>/records` (made empty first); `positional`: the writer writes each record at its place rather than appending. */
export function startApp(dir: string, name = 'records', positional = false): App {
  const file = path.join(dir, name)
  writeFileSync(file, '')
  const script = path.join(REPO_ROOT, 'dist', 'test', 'helpers', 'record-io.js')
  const run = (mode: string) => spawn(process.execPath, [script, mode, file], { stdio: ['ignore', 'pipe', 'inherit'] })
  return { writer: run(positional ? 'write-at' : 'write'), reader: run('read'), file }
}

export async function stopApp(app: App): Promise<{ writer: RecordIoReport; reader: RecordIoReport }> {
  const report = async (child: ChildProcess) => {
    let out = ''
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d })
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    await exited
    return JSON.parse(out) as RecordIoReport
  }
  return { writer: await report(app.writer), reader: await report(app.reader) }
}

/** The source of what /proc/self/mounts has at `mountpoint`, or undefined. */
export function mounted(mountpoint: string): string | undefined {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === mountpoint)?.split(' ')[0]
}

/** The mount's id (/proc/self/mountinfo): a new mount at the same place has another. */
export function mountIdOf(mountpoint: string): string | undefined {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mountpoint)?.split(' ')[0]
}

/** Every record the writer wrote is in the file, in order, and nothing else. */
export function checkRecords(t: { is: (a: unknown, b: unknown, m?: string) => void }, file: string, written: number): void {
  const text = readFileSync(file, 'latin1')
  t.is(text.length, written * RECORD_BYTES, 'the file holds exactly the records written')
  let bad = -1
  for (let seq = 0; seq < written && bad < 0; seq++) if (text.slice(seq * RECORD_BYTES, (seq + 1) * RECORD_BYTES) !== record(seq)) bad = seq
  t.is(bad, -1, 'every record reads back as written')
}

/** A stand-in for systemctl on the daemon's PATH: `list-jobs` shows a job of type `job` for pxd.service. */
export function fakeSystemctl(dir: string, job: 'restart' | 'stop'): string {
  const bin = path.join(dir, `systemctl-${job}`)
  mkdirSync(bin, { recursive: true })
  writeFileSync(path.join(bin, 'systemctl'), `#!/bin/sh\n[ "$1" = list-jobs ] && echo "42 pxd.service ${job} running"\nexit 0\n`, { mode: 0o755 })
  return `${bin}:${process.env['PATH'] ?? '/usr/bin:/bin'}`
}
