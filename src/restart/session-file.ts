/**
 * The live session a successor takes over: `<run-dir>/session.json`. It names what the
 * kernel's FUSE connection knows (the device files by nodeid) and what is built on it (each
 * attached volume's loop device, mount, epoch and mount IDs). It is rewritten after every
 * attach and detach, so a successor started after a crash (the descriptor kept by the
 * service manager's fd store) finds it as it was; a clean handoff writes it a last time with
 * `handedOff`, once every request read was answered and every engine closed.
 *
 * The run dir is tmpfs on a normal host: the file goes with a reboot, as the mounts do.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { pxdError } from '../errors'
import { writeFileDurably } from '../util/durable'
import type { FuseSessionTable } from '../native/binding'
import { isLiveShare, type LiveShare } from '../shares/share-handoff'

export const SESSION_FORMAT = 1

export interface LiveVolume {
  name: string
  volumeId: string
  epoch: number
  loop: string
  mountpoint: string
  mountIds: string[]
  /** A write failed on some replicas and was not recorded: the successor makes them equal. */
  reconcile?: boolean
}

export interface LiveSession {
  format: typeof SESSION_FORMAT
  /** The process that wrote it, and its version. */
  pid: number
  version: string
  /** Written by a clean handoff: nothing was in flight, every engine was closed. */
  handedOff: boolean
  fuse: FuseSessionTable
  volumes: LiveVolume[]
  /** Client mounts of shared volumes handed over (a clean handoff only), each with a descriptor of its own. */
  shares?: LiveShare[]
}

export function sessionFileOf(runDir: string): string {
  return path.join(runDir, 'session.json')
}

export async function writeSession(runDir: string, session: LiveSession): Promise<void> {
  await writeFileDurably(sessionFileOf(runDir), JSON.stringify(session) + '\n')
}

export async function removeSession(runDir: string): Promise<void> {
  await fs.rm(sessionFileOf(runDir), { force: true })
}

/** The session file, checked; HANDOFF_FAILED when it is missing or not one this version reads. */
export async function readSession(runDir: string): Promise<LiveSession> {
  const file = sessionFileOf(runDir)
  let parsed: unknown
  try {
    parsed = JSON.parse(await fs.readFile(file, 'utf8'))
  } catch (err) {
    throw pxdError('HANDOFF_FAILED', `cannot read the live session ${file}: ${(err as Error).message}`, err)
  }
  const s = parsed as Partial<LiveSession>
  if (s.format !== SESSION_FORMAT) throw pxdError('HANDOFF_FAILED', `${file} has session format ${String(s.format)}; this pxd reads format ${SESSION_FORMAT}`)
  const fuse = s.fuse as Partial<FuseSessionTable> | undefined
  const counts = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0
  const fileOk = (f: unknown) => typeof f === 'object' && f !== null && typeof (f as { name?: unknown }).name === 'string' && counts((f as { nodeid?: unknown }).nodeid) && counts((f as { size?: unknown }).size)
  const volumeOk = (v: unknown) => {
    const x = v as Partial<LiveVolume>
    return typeof x === 'object' && x !== null && typeof x.name === 'string' && typeof x.volumeId === 'string' && counts(x.epoch) &&
      typeof x.loop === 'string' && x.loop.startsWith('/dev/loop') && typeof x.mountpoint === 'string' && path.isAbsolute(x.mountpoint) &&
      Array.isArray(x.mountIds) && x.mountIds.every((id) => typeof id === 'string')
  }
  if (!fuse || !Array.isArray(fuse.files) || !fuse.files.every(fileOk) || !counts(fuse.nextNodeid) || !counts(fuse.mountedAt) || !counts(fuse.maxRequestBytes) ||
    (fuse.requestTimeout !== undefined && !counts(fuse.requestTimeout)) ||
    !Array.isArray(s.volumes) || !s.volumes.every(volumeOk) || typeof s.handedOff !== 'boolean' ||
    (s.shares !== undefined && (!Array.isArray(s.shares) || !s.shares.every(isLiveShare)))) {
    throw pxdError('HANDOFF_FAILED', `${file} is not a valid live session`)
  }
  return s as LiveSession
}

/** What the session file is made of: the FUSE table and attached volumes' loop and mount (frontend), their epoch and mount IDs (volume manager). */
export interface SessionSources {
  frontend: () => { fuse: FuseSessionTable; attached: Array<{ name: string; loop: string; mountpoint: string }> } | undefined
  volumes: () => Array<Omit<LiveVolume, 'loop' | 'mountpoint'>>
}

/** Joins the two halves of each volume; one without both (mid-attach) is left out. */
export function sessionOf(pid: number, version: string, handedOff: boolean, fuse: FuseSessionTable, attached: Array<{ name: string; loop: string; mountpoint: string }>, volumes: Array<Omit<LiveVolume, 'loop' | 'mountpoint'>>, shares: LiveShare[] = []): LiveSession {
  const byName = new Map(attached.map((a) => [a.name, a]))
  const live = volumes.flatMap((v) => {
    const a = byName.get(v.name)
    return a ? [{ ...v, loop: a.loop, mountpoint: a.mountpoint }] : []
  })
  return { format: SESSION_FORMAT, pid, version, handedOff, fuse, volumes: live, ...(shares.length > 0 ? { shares } : {}) }
}

/**
 * Keeps the session file current while pxd runs: `changed()` after every mount and
 * unmount rewrites it (one write at a time; a change during a write is written after it).
 */
export class SessionRecorder {
  readonly #runDir: string
  readonly #version: string
  readonly #sources: SessionSources
  #writing: Promise<void> = Promise.resolve()
  #pending = false

  constructor(runDir: string, version: string, sources: SessionSources) {
    this.#runDir = runDir
    this.#version = version
    this.#sources = sources
  }

  changed(): Promise<void> {
    if (this.#pending) return this.#writing
    this.#pending = true
    this.#writing = this.#writing.then(async () => {
      this.#pending = false
      const f = this.#sources.frontend()
      if (f) await writeSession(this.#runDir, sessionOf(process.pid, this.#version, false, f.fuse, f.attached, this.#sources.volumes()))
    })
    return this.#writing
  }
}
