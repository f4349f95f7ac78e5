/**
 * Repair: rewrite whole blocks of a replica that failed their checksum from another
 * in-sync replica (each in turn until one serves them), with overlapping writes held back (the copy lock), so the bytes copied
 * are the ones every replica has. Read repair and scrub both use it.
 *
 * The engine's reads come through readRepairing: the first in-sync replica that can serve,
 * falling back to the next, and a block that failed its checksum rewritten once served.
 */
import { BLOCK_SIZE } from '../constants'
import { blockOf, isPxdError, pxdError } from '../errors'
import type { Replica } from '../replicas/replica'
import type { EngineCore } from './core'

/** Repair the blocks of [offset, offset + length) on `bad`; resolves to whether it worked (failures go to onRepair). */
export async function repair(core: EngineCore, bad: Replica, offset: number, length: number, badBlock?: number): Promise<boolean> {
  const start = offset - (offset % BLOCK_SIZE)
  const end = Math.min(Math.ceil((offset + length) / BLOCK_SIZE) * BLOCK_SIZE, core.size)
  try {
    await core.writes.withCopyLock(start, end - start, async () => {
      const buf = Buffer.allocUnsafe(end - start)
      await readFromOthers(core, bad, start, buf, pxdError('IO_ERROR', 'no good replica left to repair from'))
      await bad.write(start, buf, 0)
      core.copied(start, end - start)
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
 * Read `into` from each readable in-sync replica but `bad` in turn, until one serves it.
 * Throws the last one's error, or `none` when there is no other.
 */
export async function readFromOthers(core: EngineCore, bad: Replica, offset: number, into: Uint8Array, none: unknown): Promise<void> {
  let last = none
  for (const r of core.members.readable) {
    if (r === bad) continue
    try {
      await r.read(offset, into)
      return
    } catch (err) {
      last = err
    }
  }
  throw last
}

/**
 * Read from the first in-sync replica that can serve. A block that fails its checksum is
 * served from the next replica and then rewritten on the bad one (read repair); with no
 * other replica the read fails, naming the block, and never returns wrong bytes. A
 * STALE_EPOCH goes to `fail` (the engine is fenced).
 */
export async function readRepairing(core: EngineCore, offset: number, into: Uint8Array, fail: (err: unknown) => never, index = 0): Promise<void> {
  const replica = core.members.readable[index]
  if (!replica) throw pxdError('IO_ERROR', `volume ${core.volumeId}: no replica could serve the read at ${offset}`)
  try {
    await replica.read(offset, into)
  } catch (err) {
    if (isPxdError(err, 'STALE_EPOCH')) return fail(err)
    const corrupt = isPxdError(err, 'CHECKSUM_MISMATCH')
    if (corrupt) core.events?.checksumFailure()
    if (index + 1 >= core.members.readable.length) throw err
    await readRepairing(core, offset, into, fail, index + 1)
    if (corrupt) await repair(core, replica, offset, into.length, blockOf(err))
  }
}
