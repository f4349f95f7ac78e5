import { promises as fs } from 'node:fs'

/** Size and free space of the file system holding a directory (a node's data dir). */
export async function capacityOf(dir: string): Promise<{ total: number; free: number }> {
  const s = await fs.statfs(dir)
  return { total: s.blocks * s.bsize, free: s.bavail * s.bsize }
}
