/**
 * Making file-system changes durable: a name (a create, a rename, an unlink) is on disk only
 * once its directory has been fsynced, whatever happened to the file's data.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'

/** fsync a directory, so the names in it are on disk. */
export async function syncDir(dir: string): Promise<void> {
  const h = await fs.open(dir, 'r')
  try {
    await h.sync()
  } finally {
    await h.close()
  }
}

/** Write a whole file durably in place of `file`: a temp file, fsynced, renamed over it, then its directory fsynced. */
export async function writeFileDurably(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = `${file}.tmp`
  const h = await fs.open(tmp, 'w', mode)
  try {
    await h.writeFile(data)
    await h.sync()
  } finally {
    await h.close()
  }
  await fs.rename(tmp, file)
  await syncDir(path.dirname(file))
}

/** Rename, then fsync both directories (one when they are the same). */
export async function renameDurably(from: string, to: string): Promise<void> {
  await fs.rename(from, to)
  await syncDir(path.dirname(to))
  if (path.dirname(from) !== path.dirname(to)) await syncDir(path.dirname(from))
}

/** Make a directory (and missing parents) and fsync its parent, so it survives a power cut. */
export async function mkdirDurably(dir: string, mode = 0o700): Promise<void> {
  const made = await fs.mkdir(dir, { recursive: true, mode })
  if (made === undefined) return
  // Every directory from the first one made up to `dir` needs its parent synced.
  for (let d = dir; ; d = path.dirname(d)) {
    await syncDir(path.dirname(d))
    if (d === made || path.dirname(d) === d) break
  }
}
