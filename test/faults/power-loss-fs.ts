/**
 * A FUSE passthrough that loses what a power cut would lose: the user-space analogue of
 * LazyFS or dm-log-writes, for a node's data dir in fault tests.
 *
 * - File data: every write since a file's last fsync/fdatasync stays in a page cache of
 *   our own (page-cache.ts), keyed by inode so it follows renames; fsync writes it to the
 *   backing file and syncs it.
 * - Names: create, mkdir, unlink, rmdir and rename are done on the backing directory at
 *   once, with an undo entry kept until every directory they touched has been fsynced
 *   (the strict POSIX reading: a new file's name is durable only after its directory's
 *   fsync, even when the file's data was synced). Names removed or replaced are kept in a
 *   stash beside the backing dir, so an undo can bring them back.
 * - `cut()`: power is lost. Dirty pages are dropped (all, or each with probability 1/2 from
 *   a seed, as write-back might have flushed some), then the undo entries run newest first.
 * - `stall(ms)`: every request waits until then (a disk that stops answering).
 * - `failFsyncs(n)`: the next n fsyncs fail with EIO and lose that file's dirty pages,
 *   which is what Linux does after a write-back error (the next fsync succeeds).
 *
 * The mount uses direct_io and zero attribute/entry timeouts, so the kernel caches nothing
 * that a cut could leave stale. One request is served at a time (fuse-native).
 */
import {
  chmodSync, closeSync, constants, fstatSync, lchownSync, lstatSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, statfsSync, utimesSync,
  type Stats,
} from 'node:fs'
import { constants as osConstants } from 'node:os'
import path from 'node:path'
import Fuse from 'fuse-native'
import { FileCache } from './page-cache'

const MAX_IO = 128 * 1024
const FUSE_OPTIONS = `power-loss-fs,direct_io,big_writes,max_write=${MAX_IO},max_read=${MAX_IO},attr_timeout=0,entry_timeout=0,negative_timeout=0`

interface Inode { fd: number; cache: FileCache }
interface UndoEntry { what: string; dirs: Set<string>; undo: () => void }

export interface CutReport { droppedPages: number; keptPages: number; undone: string[] }

export class PowerLossFs {
  readonly backing: string
  readonly mountpoint: string
  readonly #stash: string
  #fuse: Fuse | undefined
  readonly #inodes = new Map<number, Inode>()
  readonly #handles = new Map<number, number>() // FUSE handle -> inode number
  #nextHandle = 1
  #journal: UndoEntry[] = []
  #stashed = 0
  #stalledUntil = 0
  #failFsyncs = 0
  failedFsyncs = 0

  constructor(backing: string, mountpoint: string) {
    this.backing = path.resolve(backing)
    this.mountpoint = path.resolve(mountpoint)
    this.#stash = `${this.backing}.stash`
  }

  async mount(): Promise<void> {
    mkdirSync(this.#stash, { recursive: true })
    const fuse = new Fuse(this.mountpoint, this.#ops() as Fuse.Ops, { fsname: FUSE_OPTIONS, timeout: false, mkdir: true, force: true })
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())))
    this.#fuse = fuse
  }

  async unmount(): Promise<void> {
    const fuse = this.#fuse
    this.#fuse = undefined
    if (fuse) await new Promise<void>((resolve, reject) => fuse.unmount((err) => (err ? reject(err) : resolve())))
    for (const inode of this.#inodes.values()) closeSync(inode.fd)
    this.#inodes.clear()
  }

  stall(ms: number): void {
    this.#stalledUntil = Date.now() + ms
  }

  failFsyncs(count: number): void {
    this.#failFsyncs = count
  }

  /** Pages and names not yet durable, for tests of the tests. */
  status(): { dirtyPages: number; pendingNames: number; stalledMs: number; failFsyncs: number; failedFsyncs: number } {
    let dirtyPages = 0
    for (const inode of this.#inodes.values()) dirtyPages += inode.cache.pages.size
    return { dirtyPages, pendingNames: this.#journal.length, stalledMs: Math.max(0, this.#stalledUntil - Date.now()), failFsyncs: this.#failFsyncs, failedFsyncs: this.failedFsyncs }
  }

  /** Power is lost: what was not made durable goes. `seed` keeps a random half of the dirty pages instead of none. */
  cut(seed?: number): CutReport {
    const random = seed === undefined ? undefined : mulberry32(seed)
    const report: CutReport = { droppedPages: 0, keptPages: 0, undone: [] }
    for (const inode of this.#inodes.values()) {
      const dirty = inode.cache.pages.size
      const kept = inode.cache.cut(inode.fd, () => random !== undefined && random() < 0.5)
      report.keptPages += kept
      report.droppedPages += dirty - kept
    }
    for (const entry of this.#journal.reverse()) {
      try {
        entry.undo()
        report.undone.push(entry.what)
      } catch (err) {
        report.undone.push(`${entry.what} (undo failed: ${String(err)})`)
      }
    }
    this.#journal = []
    // Inodes are looked up afresh: sizes and names are what the backing dir says now.
    for (const inode of this.#inodes.values()) closeSync(inode.fd)
    this.#inodes.clear()
    this.#handles.clear()
    return report
  }

  #real(p: string): string {
    return path.join(this.backing, p)
  }

  #inode(real: string): Inode {
    const st = lstatSync(real)
    let inode = this.#inodes.get(st.ino)
    if (!inode) {
      const fd = openSync(real, constants.O_RDWR)
      inode = { fd, cache: new FileCache(fstatSync(fd).size) }
      this.#inodes.set(st.ino, inode)
    }
    return inode
  }

  #handle(fh: number, p: string): Inode {
    const ino = this.#handles.get(fh)
    const inode = ino === undefined ? undefined : this.#inodes.get(ino)
    return inode ?? this.#inode(this.#real(p))
  }

  #open(p: string): number {
    const real = this.#real(p)
    this.#inode(real)
    const fh = this.#nextHandle++
    this.#handles.set(fh, lstatSync(real).ino)
    return fh
  }

  /** Move a name out of the way, to the stash; returns where it went. */
  #toStash(real: string): string {
    const to = path.join(this.#stash, String(this.#stashed++))
    renameSync(real, to)
    return to
  }

  #record(what: string, dirs: string[], undo: () => void): void {
    this.#journal.push({ what, dirs: new Set(dirs), undo })
  }

  #fsyncDir(p: string): void {
    for (const entry of this.#journal) entry.dirs.delete(p)
    this.#journal = this.#journal.filter((e) => e.dirs.size > 0)
  }

  #stat(real: string): Fuse.Stat {
    const st: Stats = lstatSync(real)
    const inode = this.#inodes.get(st.ino)
    return {
      mode: st.mode, uid: st.uid, gid: st.gid, size: inode && st.isFile() ? inode.cache.size : st.size, nlink: st.nlink,
      mtime: st.mtime, atime: st.atime, ctime: st.ctime, blocks: st.blocks, blksize: st.blksize,
    }
  }

  #ops(): Record<string, (...args: never[]) => void> {
    const parent = (p: string) => path.posix.dirname(p)
    const ops: Record<string, (...args: any[]) => unknown> = {
      getattr: (p: string) => this.#stat(this.#real(p)),
      readdir: (p: string) => readdirSync(this.#real(p)),
      statfs: () => {
        const s = statfsSync(this.backing)
        return { bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, favail: s.ffree, fsid: 0, flag: 0, namemax: 255 }
      },
      open: (p: string) => this.#open(p),
      opendir: () => 0,
      create: (p: string, mode: number) => {
        const real = this.#real(p)
        closeSync(openSync(real, constants.O_CREAT | constants.O_EXCL | constants.O_RDWR, mode))
        const ino = lstatSync(real).ino
        this.#record(`create ${p}`, [parent(p)], () => {
          if (lstatSync(real, { throwIfNoEntry: false })?.ino === ino) rmSync(real, { force: true })
        })
        return this.#open(p)
      },
      mkdir: (p: string, mode: number) => {
        const real = this.#real(p)
        mkdirSync(real, { mode })
        this.#record(`mkdir ${p}`, [parent(p)], () => rmSync(real, { recursive: true, force: true }))
      },
      unlink: (p: string) => this.#remove(p),
      rmdir: (p: string) => this.#remove(p),
      rename: (from: string, to: string) => {
        const realFrom = this.#real(from)
        const realTo = this.#real(to)
        const replaced = lstatSync(realTo, { throwIfNoEntry: false }) ? this.#toStash(realTo) : undefined
        renameSync(realFrom, realTo)
        this.#record(`rename ${from} ${to}`, [parent(from), parent(to)], () => {
          renameSync(realTo, realFrom)
          if (replaced) renameSync(replaced, realTo)
        })
      },
      read: (p: string, fh: number, buf: Buffer, len: number, pos: number) => {
        const inode = this.#handle(fh, p)
        return inode.cache.read(inode.fd, buf.subarray(0, len), pos)
      },
      write: (p: string, fh: number, buf: Buffer, len: number, pos: number) => {
        const inode = this.#handle(fh, p)
        inode.cache.write(inode.fd, buf.subarray(0, len), pos)
        return len
      },
      truncate: (p: string, size: number) => this.#inode(this.#real(p)).cache.truncate(size),
      ftruncate: (p: string, fh: number, size: number) => this.#handle(fh, p).cache.truncate(size),
      fsync: (p: string, _datasync: number, fh: number) => {
        const inode = this.#handle(fh, p)
        if (this.#failFsyncs > 0) {
          this.#failFsyncs--
          this.failedFsyncs++
          inode.cache.pages.clear()
          inode.cache.truncate(fstatSync(inode.fd).size)
          throw Object.assign(new Error('injected fsync failure'), { code: 'EIO' })
        }
        inode.cache.sync(inode.fd)
      },
      fsyncdir: (p: string) => this.#fsyncDir(p),
      flush: () => undefined,
      release: (_p: string, fh: number) => { this.#handles.delete(fh) },
      releasedir: () => undefined,
      chmod: (p: string, mode: number) => chmodSync(this.#real(p), mode),
      chown: (p: string, uid: number, gid: number) => lchownSync(this.#real(p), uid, gid),
      utimens: (p: string, atime: Date, mtime: Date) => utimesSync(this.#real(p), atime, mtime),
      access: () => undefined,
    }
    // Each handler runs synchronously; a stall holds every request back until it ends.
    const wrapped: Record<string, (...args: never[]) => void> = {}
    for (const [name, op] of Object.entries(ops)) {
      wrapped[name] = (...args: unknown[]) => {
        const cb = args.pop() as (code: number, ...rest: unknown[]) => void
        const run = () => {
          let result: unknown
          try {
            result = op(...args)
          } catch (err) {
            return cb(errnoOf(err))
          }
          if (name === 'read' || name === 'write') return cb(result as number)
          return result === undefined ? cb(0) : cb(0, result)
        }
        const wait = this.#stalledUntil - Date.now()
        if (wait > 0) setTimeout(run, wait)
        else run()
      }
    }
    return wrapped
  }

  #remove(p: string): void {
    const real = this.#real(p)
    const stashed = this.#toStash(real)
    this.#record(`remove ${p}`, [path.posix.dirname(p)], () => renameSync(stashed, real))
  }
}

/** A negative errno for fuse-native's callbacks. */
function errnoOf(err: unknown): number {
  const code = (err as { code?: string }).code
  const errno = osConstants.errno as Record<string, number>
  return -((code !== undefined ? errno[code] : undefined) ?? errno.EIO!)
}

/** A small seeded PRNG, so a failing cut replays. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
