/**
 * Snapshot layers of one replica (redirect-on-write).
 *
 * A snapshot freezes the replica's live files as a layer, `snaps/<id>/{data,crc}`, and gives
 * the replica new, empty live files on top of it. Writes go to the live files only; a block
 * they do not have is read from the nearest layer below that has it, checked against that
 * layer's own checksums (native/block_layers.cc). Taking one copies no data: two renames,
 * two new sparse files and the superblock, whatever the volume's size.
 *
 * The superblock holds the tree: each layer's parent (the layer below it) and the live
 * files' parent. A restore gives the replica new, empty live files on the snapshot's layer
 * (what was written since is gone); later snapshots keep their own layers.
 *
 * Crashes: a snapshot or a restore is recorded in the superblock as pending, durably, before
 * any file moves, and each step after that is idempotent, so the next open rolls it forward:
 * the layer exists whole, or (no pending record) nothing moved.
 *
 * Deleting a layer gives its space back: with nothing on it, its files go; with one child
 * (the live files or a later layer) its blocks that the child lacks are copied up into the
 * child, which reads the same before and after, and then it goes. A layer with two children
 * (there was a restore) stays, hidden, until one of them goes.
 *
 * A clone (`cloneLayers`) is a new replica directory whose layers are hard links to its
 * source's: the blocks are shared on the host, and neither replica ever writes a layer a
 * link shares (a delete leaves such a layer hidden instead of merging it), so writing to
 * one never changes the other, and either can be deleted first.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { pxdError } from '../errors'
import { mkdirDurably, syncDir } from '../util/durable'
import { closeNative, mergeLayer, openNative, overlayLayer, type StorePaths } from './native-store'

/** A frozen layer as the superblock records it. */
export interface LayerRecord {
  /** The layer below it; none: it is the bottom of its chain. */
  parent?: string
  /** The volume's size when it was taken (a later grow leaves it as it was). */
  size: number
  createdAt: string
  /** Its snapshot was deleted, but two layers or live files still sit on it. */
  hidden?: boolean
}

/** What of the superblock concerns layers. */
export interface LayerState {
  size: number
  /** The layer the live files sit on; none: they are the bottom. */
  parent?: string
  layers?: Record<string, LayerRecord>
  /**
   * Under way: a snapshot (freeze the live files as `layer`), a restore (new live files on
   * it), or a collapse (`child`, the live files or a layer, copied down into `layer`, whose
   * files then take the child's place).
   */
  pending?: { op: 'snapshot' | 'restore' | 'collapse'; layer: string; at?: string; child?: string }
}

export const SNAPSHOTS_DIR = 'snaps'

export function layerFiles(dir: string, id: string): { dir: string; data: string; crc: string } {
  const d = path.join(dir, SNAPSHOTS_DIR, id)
  return { dir: d, data: path.join(d, 'data'), crc: path.join(d, 'crc') }
}

/** The layers from `top` down, nearest first, as the native store takes them ([data, crc, ...]). */
export function basesFrom(dir: string, state: LayerState, top: string | undefined): string[] {
  const out: string[] = []
  const seen = new Set<string>()
  for (let id = top; id !== undefined; id = state.layers?.[id]?.parent) {
    if (seen.has(id) || !state.layers?.[id]) throw pxdError('IO_ERROR', `replica ${dir}: its snapshot layer ${id} is missing from the superblock`)
    seen.add(id)
    const f = layerFiles(dir, id)
    out.push(f.data, f.crc)
  }
  return out
}

/** The snapshot ids this replica has layers of (hidden ones left out). */
export function snapshotsOf(state: LayerState): string[] {
  return Object.entries(state.layers ?? {}).filter(([, l]) => !l.hidden).map(([id]) => id)
}

/** Whether a hidden layer has at most one child and no clone shares it: collectHidden can delete it. */
export async function hasCollectable(dir: string, state: LayerState): Promise<boolean> {
  for (const [id, l] of Object.entries(state.layers ?? {})) {
    if (l.hidden && childrenOf(state, id).length <= 1 && !(await shared(layerFiles(dir, id).data))) return true
  }
  return false
}

/** What sits on layer `id`: later layers, and 'live' for the live files. */
function childrenOf(state: LayerState, id: string): string[] {
  const kids = Object.entries(state.layers ?? {}).filter(([, l]) => l.parent === id).map(([k]) => k)
  if (state.parent === id) kids.push('live')
  return kids
}

function without<T extends LayerState>(state: T, id: string): T {
  const { [id]: _gone, ...layers } = state.layers ?? {}
  return { ...state, layers }
}

/** How the layers module writes the superblock and makes new live files; the replica store's own. */
export interface LayerIo<T extends LayerState> {
  live: StorePaths
  writeState(state: T): Promise<void>
  /** The live files are open in a store (written meanwhile): they cannot be collapsed. */
  storeOpen?: boolean
}

/** Record a snapshot or a restore as pending (durably), then carry it out. The store must be closed. */
export async function beginPending<T extends LayerState>(dir: string, state: T, op: 'snapshot' | 'restore', layer: string, io: LayerIo<T>): Promise<T> {
  if (op === 'snapshot' && state.layers?.[layer]) throw pxdError('ALREADY_EXISTS', `replica ${dir} already has a layer ${layer}`)
  if (op === 'restore' && !state.layers?.[layer]) throw pxdError('NOT_FOUND', `replica ${dir} has no snapshot layer ${layer}`)
  const pending: T = { ...state, pending: { op, layer, at: new Date().toISOString() } }
  await io.writeState(pending)
  return finishPending(dir, pending, io)
}

/** Roll a pending snapshot or restore forward; each step may already be done (after a crash). */
export async function finishPending<T extends LayerState>(dir: string, state: T, io: LayerIo<T>): Promise<T> {
  const pending = state.pending
  if (!pending) return state
  if (pending.op === 'collapse') return finishCollapse(dir, state, io)
  const { pending: _done, ...rest } = state
  let next: T
  if (pending.op === 'snapshot') {
    const f = layerFiles(dir, pending.layer)
    await mkdirDurably(f.dir)
    for (const [from, to] of [[io.live.data, f.data], [io.live.crc, f.crc]] as const) {
      if (!(await exists(to))) await fs.rename(from, to)
    }
    await syncDir(f.dir)
    await syncDir(dir)
    next = { ...rest, parent: pending.layer, layers: { ...state.layers, [pending.layer]: { ...(state.parent !== undefined ? { parent: state.parent } : {}), size: state.size, createdAt: pending.at ?? new Date().toISOString() } } } as T
  } else {
    next = { ...rest, parent: pending.layer } as T
  }
  // New live files on the layer: whatever live files are there now are the old ones (a
  // restore drops them) or new ones a crash cut short.
  for (const file of [io.live.data, io.live.crc, io.live.intent]) await fs.rm(file, { force: true })
  await syncDir(dir)
  const handle = await openNative(io.live, state.size, { create: true, readOnly: false, bases: basesFrom(dir, next, next.parent) })
  await closeNative(handle, dir)
  await io.writeState(next)
  return collectHidden(dir, next, io)
}

/**
 * Delete layer `id` and give its space back (see the top of this file). `mergeIntoLive`
 * copies the layer's blocks up into the live files when they are its only child: through
 * the open store when there is one (writes may run meanwhile). Deleting a layer twice, or
 * one that is not there, changes nothing.
 */
export async function removeLayer<T extends LayerState>(dir: string, state: T, id: string, io: LayerIo<T>, mergeIntoLive: () => Promise<void>): Promise<T> {
  const next = await removeOne(dir, state, id, io, mergeIntoLive)
  return next === state ? state : collectHidden(dir, next, io, mergeIntoLive)
}

/** One layer out, if it can go now (else hidden); the state unchanged when nothing changed. */
async function removeOne<T extends LayerState>(dir: string, state: T, id: string, io: LayerIo<T>, mergeIntoLive: () => Promise<void>): Promise<T> {
  const layer = state.layers?.[id]
  if (!layer) return state
  const kids = childrenOf(state, id)
  const reparent = layer.parent !== undefined ? { parent: layer.parent } : {}
  const hide = async (): Promise<T> => {
    if (layer.hidden) return state
    const hidden: T = { ...state, layers: { ...state.layers, [id]: { ...layer, hidden: true } } }
    await io.writeState(hidden)
    return hidden
  }
  let next: T
  if (kids.length === 0) {
    next = without(state, id)
  } else if (kids.length > 1 || (await shared(layerFiles(dir, id).data))) {
    // Two children need it as it is; a layer a clone shares would be copied for nothing.
    return hide()
  } else if (kids[0] === 'live') {
    // Copy the smaller side: the live files down into the layer (closed only), or it up.
    if ((await bytesOf(io.live.data)) < (await bytesOf(layerFiles(dir, id).data))) {
      return io.storeOpen ? hide() : collapse(dir, state, id, 'live', io)
    }
    await mergeIntoLive()
    const { parent: _p, ...rest } = without(state, id)
    next = { ...rest, ...reparent } as T
  } else {
    const child = kids[0]!
    if ((await bytesOf(layerFiles(dir, child).data)) < (await bytesOf(layerFiles(dir, id).data))) return collapse(dir, state, id, child, io)
    // A clone's layer is never written: the clone reads it too.
    if (await shared(layerFiles(dir, child).data)) return hide()
    await mergeLayer(layerFiles(dir, id), layerFiles(dir, child))
    const { parent: _p, ...childRest } = state.layers![child]!
    next = without({ ...state, layers: { ...state.layers, [child]: { ...childRest, ...reparent } } }, id)
  }
  await io.writeState(next)
  await dropLayerDir(dir, id)
  return next
}

/** Hidden layers that can go now go too (one with at most one child, unless a clone shares it). */
export async function collectHidden<T extends LayerState>(dir: string, state: T, io: LayerIo<T>, mergeIntoLive?: () => Promise<void>): Promise<T> {
  for (let progress = true; progress;) {
    progress = false
    for (const [id, layer] of Object.entries(state.layers ?? {})) {
      const kids = childrenOf(state, id)
      // Merging into the live files needs the store: a hidden layer under them waits for the next delete.
      if (!layer.hidden || kids.length > 1 || (kids[0] === 'live' && !mergeIntoLive)) continue
      const next = await removeOne(dir, state, id, io, mergeIntoLive ?? (async () => undefined))
      if (next !== state) {
        state = next
        progress = true
        break
      }
    }
  }
  return state
}

/**
 * Delete layer `id` by copying its only child down into it (the child has fewer blocks):
 * recorded as pending first, then finishCollapse. `id`'s files end up as the child's.
 */
async function collapse<T extends LayerState>(dir: string, state: T, id: string, child: string, io: LayerIo<T>): Promise<T> {
  const pending: T = { ...state, pending: { op: 'collapse', layer: id, child, at: new Date().toISOString() } }
  await io.writeState(pending)
  return finishCollapse(dir, pending, io)
}

/**
 * Each step may be done already (after a crash): while both of the layer's files are there
 * the copy is done (again) from the start; the child, still in place, is read before the
 * layer, so blocks a cut copy left torn in the layer are never read. Then the layer's files
 * are renamed over the child's, one at a time.
 */
async function finishCollapse<T extends LayerState>(dir: string, state: T, io: LayerIo<T>): Promise<T> {
  const { layer: id, child } = state.pending as { layer: string; child: string }
  const { pending: _done, ...rest } = state
  const from = child === 'live' ? io.live : layerFiles(dir, child)
  const into = layerFiles(dir, id)
  const size = child === 'live' ? state.size : state.layers![child]!.size
  if ((await exists(into.data)) && (await exists(into.crc))) {
    await extend(into.data, size)
    await extend(into.crc, (size / blockSizeOf(state)) * 4)
    await overlayLayer(from, into)
  }
  for (const f of ['data', 'crc'] as const) if (await exists(into[f])) await fs.rename(into[f], from[f])
  await syncDir(path.dirname(from.data))
  const reparent = state.layers![id]!.parent
  let next = without(rest as T, id)
  if (child === 'live') {
    const { parent: _p, ...top } = next
    next = { ...top, ...(reparent !== undefined ? { parent: reparent } : {}) } as T
  } else {
    const { parent: _p, ...record } = next.layers![child]!
    next = { ...next, layers: { ...next.layers, [child]: { ...record, ...(reparent !== undefined ? { parent: reparent } : {}) } } }
  }
  await io.writeState(next)
  await dropLayerDir(dir, id)
  return next
}

/** The block size the superblock names (4096 before it did). */
function blockSizeOf(state: LayerState): number {
  return (state as { blockSize?: number }).blockSize ?? 4096
}

async function extend(file: string, bytes: number): Promise<void> {
  const h = await fs.open(file, 'r+')
  try {
    if ((await h.stat()).size < bytes) {
      await h.truncate(bytes)
      await h.datasync()
    }
  } finally {
    await h.close()
  }
}

/** Host bytes a file takes (its holes not counted). */
async function bytesOf(file: string): Promise<number> {
  return ((await fs.stat(file).catch(() => undefined))?.blocks ?? 0) * 512
}

/** Whether another replica's directory (a clone) links the file too. */
async function shared(file: string): Promise<boolean> {
  return ((await fs.stat(file).catch(() => undefined))?.nlink ?? 1) > 1
}

/**
 * The layers of snapshot `layer` of the replica in `dir`, linked into the new replica
 * directory `into` (hard links: the host shares their blocks), all hidden there (they are
 * the clone's past, not snapshots of it). Returns the new replica's layer state: its live
 * files, which the caller makes, sit on `layer`.
 */
export async function cloneLayers(dir: string, state: LayerState, layer: string, into: string): Promise<LayerState> {
  const record = state.layers?.[layer]
  if (!record || record.hidden) throw pxdError('UNKNOWN_VOLUME', `replica ${dir} has no snapshot ${layer}`)
  const layers: Record<string, LayerRecord> = {}
  for (let id: string | undefined = layer; id !== undefined; id = state.layers?.[id]?.parent) {
    const from = layerFiles(dir, id)
    const to = layerFiles(into, id)
    await fs.mkdir(to.dir, { recursive: true, mode: 0o700 })
    await fs.link(from.data, to.data)
    await fs.link(from.crc, to.crc)
    await syncDir(to.dir)
    layers[id] = { ...state.layers![id]!, hidden: true }
  }
  await syncDir(path.join(into, SNAPSHOTS_DIR))
  return { size: record.size, parent: layer, layers }
}

/** Host bytes the layers take (their data and checksum files). */
export async function layerBytes(dir: string, state: LayerState): Promise<number> {
  let bytes = 0
  for (const id of Object.keys(state.layers ?? {})) {
    const f = layerFiles(dir, id)
    bytes += (await bytesOf(f.data)) + (await bytesOf(f.crc))
  }
  return bytes
}

/** A layer's directory gone, durably (the superblock no longer names it). */
async function dropLayerDir(dir: string, id: string): Promise<void> {
  await fs.rm(layerFiles(dir, id).dir, { recursive: true, force: true })
  await syncDir(path.join(dir, SNAPSHOTS_DIR))
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file)
    return true
  } catch {
    return false
  }
}
