/** What integration tests do with volumes again and again: write durably, hash, compare replicas. */
import { createHash } from 'node:crypto'
import { closeSync, openSync, promises as fs, readFileSync, readSync, writeSync } from 'node:fs'
import path from 'node:path'
import { BLOCK_SIZE, HASH_BYTES } from '../../src/constants'
import { native } from '../../src/native/binding'
import { basesFrom, layerFiles, type LayerState } from '../../src/store/layers'
import { closeNative, openNative } from '../../src/store/native-store'
import { pluginCall } from './plugin-client'

export const MiB = 1024 * 1024

export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

/** Write a file and fsync it: once this resolves the write was acknowledged as durable. */
export async function writeSynced(file: string, data: Buffer): Promise<void> {
  const h = await fs.open(file, 'w')
  try {
    await h.writeFile(data)
    await h.sync()
  } finally {
    await h.close()
  }
}

/** A plugin call that must succeed; its reply body. */
export async function pluginOk(node: { pluginSocket: string; nodeId?: string }, endpoint: string, body: unknown): Promise<Record<string, unknown>> {
  const reply = await pluginCall(node.pluginSocket, endpoint, body)
  if (reply.body.Err) throw new Error(`${endpoint} on ${node.nodeId ?? node.pluginSocket}: ${String(reply.body.Err)}`)
  return reply.body
}

/** A node's replica of a volume as it is on the host's disk: data file and checksum file, read at once. */
export async function replicaFiles(node: { dataDir: string }, volumeId: string): Promise<{ data: Buffer; crc: Buffer }> {
  const dir = path.join(node.dataDir, 'replicas', volumeId)
  const [data, crc] = await Promise.all([fs.readFile(path.join(dir, 'data')), fs.readFile(path.join(dir, 'crc'))])
  return { data, crc }
}

/** sha256 of a node's replica of a volume: data file and checksum file. */
export async function replicaDigest(node: { dataDir: string }, volumeId: string): Promise<string> {
  const { data, crc } = await replicaFiles(node, volumeId)
  return `${sha(data)}/${sha(crc)}`
}

/**
 * sha256 of the hashes of every block of a node's replica of a volume as it reads (its live
 * files over its snapshot layers), or of one snapshot `layer` of it: the files opened
 * read-only beside the daemon's own store. Two copies that read the same have the same.
 */
export async function replicaViewHash(node: { dataDir: string }, volumeId: string, layer?: string): Promise<string> {
  const dir = path.join(node.dataDir, 'replicas', volumeId)
  const superblock = JSON.parse(await fs.readFile(path.join(dir, 'super.json'), 'utf8')) as LayerState
  const files = layer === undefined ? { data: path.join(dir, 'data'), crc: path.join(dir, 'crc') } : layerFiles(dir, layer)
  const top = layer === undefined ? superblock.parent : superblock.layers?.[layer]?.parent
  const size = layer === undefined ? superblock.size : superblock.layers![layer]!.size
  const handle = await openNative({ data: files.data, crc: files.crc, intent: '' }, size, { create: false, readOnly: true, bases: basesFrom(dir, superblock, top) })
  const hash = createHash('sha256')
  try {
    const chunk = 64 * MiB
    for (let off = 0; off < size; off += chunk) {
      const out = Buffer.alloc((Math.min(chunk, size - off) / BLOCK_SIZE) * HASH_BYTES)
      await new Promise<void>((resolve, reject) => native.storeHashes(handle, off, out, (err) => (err ? reject(err) : resolve())))
      hash.update(out)
    }
  } finally {
    await closeNative(handle, dir)
  }
  return hash.digest('hex')
}

/** Flip one byte in the middle of the replica's written data; returns the block index. */
export function corruptOneBlock(n: { dataDir: string }, volumeId: string): number {
  const dir = path.join(n.dataDir, 'replicas', volumeId)
  const crcs = readFileSync(path.join(dir, 'crc'))
  const written: number[] = []
  for (let b = 0; b < crcs.length / 4; b++) if (crcs.readUInt32LE(b * 4) !== 0) written.push(b)
  // The last written blocks belong to the file written last (ext4 allocates it after its metadata).
  const block = written[written.length - 64]!
  const fd = openSync(path.join(dir, 'data'), 'r+')
  try {
    const byte = Buffer.alloc(1)
    readSync(fd, byte, 0, 1, block * 4096 + 100)
    byte[0] = byte[0]! ^ 0xff
    writeSync(fd, byte, 0, 1, block * 4096 + 100)
  } finally {
    closeSync(fd)
  }
  return block
}
