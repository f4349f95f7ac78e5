/** What integration tests do with volumes again and again: write durably, hash, compare replicas. */
import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
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
