/**
 * The addon's block store as promises, and its errors as ours: what ReplicaStore and the
 * snapshot layers (layers.ts) open, merge and close through.
 */
import path from 'node:path'
import { BLOCK_SIZE } from '../constants'
import { pxdError, PxdError, type ErrorCode } from '../errors'
import { native, type NativeError, type StoreHandle } from '../native/binding'

/** A replica's live files, or a snapshot layer's (no intent file: it is never written). */
export interface StorePaths {
  data: string
  crc: string
  intent: string
}

export interface OpenMode {
  create: boolean
  readOnly: boolean
  /** The layers under these files, nearest first, as [data, crc, data, crc, ...]. */
  bases: string[]
}

export function openNative(f: StorePaths, size: number, mode: OpenMode): Promise<StoreHandle> {
  const what = mode.create ? 'create' : 'open'
  return new Promise((resolve, reject) => {
    native.storeOpenLayered(f.data, f.crc, f.intent, size, BLOCK_SIZE, mode.create, mode.readOnly, mode.bases, (err, handle) => {
      if (err || !handle) return reject(storeError(err ?? pxdError('INTERNAL', 'the addon gave no store handle'), what, path.dirname(f.data)))
      resolve(handle)
    })
  })
}

export function closeNative(handle: StoreHandle, dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    native.storeClose(handle, (err) => (err ? reject(storeError(err, 'close', dir)) : resolve()))
  })
}

/** Copy the blocks of the open store's nearest base that its live files lack into them (the view stays the same). */
export function mergeBase(handle: StoreHandle, dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    native.storeMergeBase(handle, (err) => (err ? reject(storeError(err, 'merge', dir)) : resolve()))
  })
}

/** Copy the blocks of layer `from` that layer `into` lacks into it, data made durable before checksums. */
export function mergeLayer(from: { data: string; crc: string }, into: { data: string; crc: string }): Promise<void> {
  return new Promise((resolve, reject) => {
    native.layerMerge(from.data, from.crc, into.data, into.crc, BLOCK_SIZE, (err) => (err ? reject(storeError(err, 'merge', path.dirname(into.data))) : resolve()))
  })
}

/** Copy every block layer `from` has into layer `into`, over `into`'s own (a collapse: see layers.ts). */
export function overlayLayer(from: { data: string; crc: string }, into: { data: string; crc: string }): Promise<void> {
  return new Promise((resolve, reject) => {
    native.layerOverlay(from.data, from.crc, into.data, into.crc, BLOCK_SIZE, (err) => (err ? reject(storeError(err, 'collapse', path.dirname(into.data))) : resolve()))
  })
}

const CODE_MAP: Record<string, ErrorCode> = {
  ECHECKSUM: 'CHECKSUM_MISMATCH',
  ECLOSED: 'STORE_CLOSED',
  ERANGE: 'INVALID_ARGUMENT',
  EINVAL: 'INVALID_ARGUMENT',
  ENOSPC: 'NO_SPACE',
  EEXIST: 'ALREADY_EXISTS',
  ENOENT: 'NOT_FOUND',
  EROFS: 'READ_ONLY',
}

/** The addon's error as ours; a checksum failure keeps the block it names. */
export function storeError(err: NativeError | Error, op: string, dir: string): PxdError {
  const nativeCode = (err as NativeError).code
  const code = (nativeCode && CODE_MAP[nativeCode]) ?? 'IO_ERROR'
  const block = (err as NativeError).block
  return new PxdError(code, `replica ${dir}: ${op} failed: ${err.message}`, block === undefined ? { cause: err } : { cause: err, block })
}
