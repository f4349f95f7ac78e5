/**
 * One daemon per data dir and per run dir: an exclusive flock on `<dir>/pxd.lock`, taken
 * before anything in the dir is touched and held for the daemon's whole life (the kernel
 * drops it when the process dies, however it dies). A second pxd started on the same dirs
 * stops at once, naming the holder, instead of "cleaning up" the live daemon's mounts.
 */
import { closeSync, ftruncateSync, readFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { codeOf, pxdError } from '../errors'
import { native } from '../native/binding'

export const LOCK_FILE = 'pxd.lock'

export interface DirLocks {
  release(): void
}

/** Lock every dir (they must exist), or none: throws DIR_LOCKED naming the pid that holds one. */
export function lockDirs(dirs: string[]): DirLocks {
  const held: number[] = []
  const release = () => {
    for (const fd of held.splice(0)) closeSync(fd)
  }
  try {
    for (const dir of new Set(dirs.map((d) => path.resolve(d)))) {
      const file = path.join(dir, LOCK_FILE)
      let fd: number
      try {
        fd = native.lockFile(file)
      } catch (err) {
        if (codeOf(err) !== 'EAGAIN') throw pxdError('PRECONDITION', `cannot lock ${file}: ${(err as Error).message}`, err)
        const holder = readFileSync(file, 'utf8').trim()
        throw pxdError('DIR_LOCKED', `another pxd${/^\d+$/.test(holder) ? ` (pid ${holder})` : ''} is using ${dir}; stop it first, or give this one its own --data-dir and --run-dir`)
      }
      held.push(fd)
      ftruncateSync(fd, 0)
      writeSync(fd, `${process.pid}\n`, 0)
    }
  } catch (err) {
    release()
    throw err
  }
  return { release }
}
