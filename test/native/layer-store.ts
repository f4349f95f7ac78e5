/** Helpers for the layered block store tests (test/native/block-layers*.test.ts). */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import type { ExecutionContext } from 'ava'
import { native, type StoreHandle } from '../../src/native/binding'
import { BS, closeStore, openStore, readStore, storeFiles, writeStore, type StoreFiles } from '../helpers/native-store'

export interface LayeredOpen {
  create?: boolean
  readOnly?: boolean
  /** Nearest first. */
  bases?: StoreFiles[]
}

/** storeOpenLayered on `s` over `bases`; closed at the end of the test unless closed before. */
export function openLayered(t: ExecutionContext, s: StoreFiles, o: LayeredOpen = {}): Promise<StoreHandle> {
  const bases = (o.bases ?? []).flatMap((b) => [b.data, b.crc])
  return new Promise((resolve, reject) =>
    native.storeOpenLayered(s.data, s.crc, s.intent, s.size, BS, o.create ?? false, o.readOnly ?? false, bases, (err, h) => {
      if (err) return reject(err)
      t.teardown(() => closeStore(h!))
      resolve(h!)
    }),
  )
}

/** A frozen layer: a store (over `bases`, if any) holding `writes` ([offset, bytes]), closed. */
export async function frozen(t: ExecutionContext, size: number, writes: Array<[number, Buffer]>, bases: StoreFiles[] = []): Promise<StoreFiles> {
  const s = storeFiles(t, 'pxd-layer-', size)
  const h = bases.length === 0 ? await openStore(t, s, true) : await openLayered(t, s, { create: true, bases })
  for (const [offset, bytes] of writes) await writeStore(h, offset, bytes)
  await closeStore(h)
  return s
}

export async function readAll(h: StoreHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length)
  await readStore(h, offset, buf)
  return buf
}

export const fileSha = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex')

export function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const b = Buffer.alloc(1)
    fs.readSync(fd, b, 0, 1, offset)
    b[0] = b[0]! ^ 0x01
    fs.writeSync(fd, b, 0, 1, offset)
  } finally {
    fs.closeSync(fd)
  }
}
