/** A block store driven through the addon directly (test/native): its files in a temp dir, and its calls as promises. */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { ExecutionContext } from 'ava'
import { native, type Callback, type StoreHandle } from '../../src/native/binding'

export const BS = 4096

export interface StoreFiles { dir: string; data: string; crc: string; intent: string; size: number }

export function done(run: (cb: Callback) => void): Promise<void> {
  return new Promise((resolve, reject) => run((err) => (err ? reject(err) : resolve())))
}

/** The paths of a store of `size` bytes in a temp dir removed after the test. */
export function storeFiles(t: ExecutionContext, prefix: string, size: number): StoreFiles {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return { dir, data: path.join(dir, 'data'), crc: path.join(dir, 'crc'), intent: path.join(dir, 'intent'), size }
}

/** Opens (or creates) the store; closed at the end of the test unless closed before. */
export function openStore(t: ExecutionContext, s: StoreFiles, create = false): Promise<StoreHandle> {
  return new Promise((resolve, reject) =>
    native.storeOpen(s.data, s.crc, s.intent, s.size, BS, create, (err, h) => {
      if (err) return reject(err)
      t.teardown(() => closeStore(h!))
      resolve(h!)
    }),
  )
}

export const writeStore = (h: StoreHandle, offset: number, buf: Uint8Array) => done((cb) => native.storeWrite(h, offset, buf, cb))
export const readStore = (h: StoreHandle, offset: number, buf: Uint8Array) => done((cb) => native.storeRead(h, offset, buf, cb))
export const flushStore = (h: StoreHandle) => done((cb) => native.storeFlush(h, cb))
export const closeStore = (h: StoreHandle) => done((cb) => native.storeClose(h, cb))
export const abandonStore = (h: StoreHandle) => done((cb) => native.storeAbandon(h, cb))

/** A block's stored crc, read from the crc file. */
export const crcEntry = (s: StoreFiles, block: number) => fs.readFileSync(s.crc).readUInt32LE(block * 4)
