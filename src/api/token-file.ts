/**
 * The API token a node asks of every changing call. When the operator names no token file,
 * the daemon keeps one of its own at `<data-dir>/api-token`: made once, at first start, from
 * 32 random bytes, mode 0600 and durable, so only root (and whoever the operator lets read
 * it) can change anything, on loopback too. Reads stay open.
 */
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { pxdError } from '../errors'
import { syncDir } from '../util/durable'

export const DEFAULT_TOKEN_FILE_NAME = 'api-token'

/** The token file the daemon uses: the operator's, else the data dir's own. */
export function tokenFileOf(dataDir: string, apiTokenFile: string | undefined): string {
  return apiTokenFile ?? path.join(dataDir, DEFAULT_TOKEN_FILE_NAME)
}

/**
 * Make the data dir's token file when it is missing; an existing one is kept (a restart
 * keeps the token pxctl and scripts already hold). Returns whether it was made.
 */
export async function ensureTokenFile(file: string): Promise<boolean> {
  let h: fs.FileHandle
  try {
    h = await fs.open(file, 'wx', 0o600)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw pxdError('IO_ERROR', `cannot create the API token file ${file}: ${(err as Error).message}`, err)
  }
  try {
    await h.writeFile(randomBytes(32).toString('hex') + '\n')
    await h.sync()
  } finally {
    await h.close()
  }
  await syncDir(path.dirname(file))
  return true
}
