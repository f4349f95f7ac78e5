/**
 * Repair: rewrite whole blocks of a replica that failed their checksum from another
 * in-sync replica, with overlapping writes held back (the copy lock), so the bytes copied
 * are the ones every replica has. Read repair and scrub both use it.
 */
import { BLOCK_SIZE } from '../constants'
import { pxdError, type PxdError } from '../errors'
import type { Replica } from '../replicas/replica'
import type { EngineCore } from './core'

/** Repair the blocks of [offset, offset + length) on `bad`; resolves to whether it worked (failures go to onRepair). */
export async function repair(core: EngineCore, bad: Replica, offset: number, length: number, badBlock?: number): Promise<boolean> {
  const start = offset - (offset % BLOCK_SIZE)
  const end = Math.min(Math.ceil((offset + length) / BLOCK_SIZE) * BLOCK_SIZE, core.size)
  try {
    await core.writes.withCopyLock(start, end - start, async () => {
      const source = core.members.inSync.find((r) => r !== bad)
      if (!source) throw pxdError('IO_ERROR', 'no good replica left to repair from')
      const buf = Buffer.allocUnsafe(end - start)
      await source.read(start, buf)
      await bad.write(start, buf, 0)
    })
  } catch (err) {
    core.onRepair?.(bad.nodeId, start, end - start, err, badBlock)
    return false
  }
  core.events?.repaired()
  core.onRepair?.(bad.nodeId, start, end - start, undefined, badBlock)
  return true
}

/**
 * The block a checksum failure names, when it names one: a peer's error carries it as
 * `block`, the local store's as its cause's (the addon's error).
 */
export function badBlockOf(err: PxdError): number | undefined {
  if (err.block !== undefined) return err.block
  const cause = err.cause as { block?: unknown } | undefined
  return typeof cause?.block === 'number' ? cause.block : undefined
}
