/**
 * The share executor process: the addon's file-operation executor (native/share_server.h)
 * for every shared volume its daemon serves, driven over fd 3 (executor-wire.ts).
 *
 * Why a process of its own: the volumes' ext4 sits on a loop device whose I/O the daemon
 * itself serves (its FUSE device directory). A thread of the daemon waiting in the kernel
 * for such I/O (an fsync, a journal commit) would keep the daemon from ever exiting once it
 * is killed: the exit waits for the thread, the thread for the daemon's FUSE server. Here,
 * when the daemon dies, its FUSE connection goes, the waits fail, and this process ends
 * when its socket closes.
 */
import net from 'node:net'
import { messageOf } from '../errors'
import { native } from '../native/binding'
import type { ShareServerHandle } from '../native/share-server-binding'
import { Kind, MessageReader, send, type Message } from './executor-wire'

const socket = new net.Socket({ fd: 3, readable: true, writable: true })
const served = new Map<number, ShareServerHandle>()
let nextExport = 1

const fail = (m: Message, err: unknown) =>
  send(socket, Kind.Failed, m.id, m.exportId, 0, Buffer.from(JSON.stringify({ code: (err as { code?: string }).code ?? 'EIO', message: messageOf(err) })))

function handle(m: Message): void {
  try {
    if (m.kind === Kind.Open) {
      const { root, tag, threads } = JSON.parse(m.payload.toString('utf8')) as { root: string; tag: string; threads: number }
      const id = nextExport++
      served.set(id, native.shareServerOpen(root, tag, threads))
      return send(socket, Kind.Ok, m.id, id, 0)
    }
    const h = served.get(m.exportId)
    if (h === undefined) throw Object.assign(new Error(`no export ${m.exportId}`), { code: 'ENOENT' })
    switch (m.kind) {
      case Kind.Exec:
        // The payload is a view of what the socket read; the addon holds it until it replies.
        return native.shareServerExec(h, m.client, m.payload, (reply) => send(socket, Kind.Ok, m.id, m.exportId, m.client, reply))
      case Kind.Drop:
        native.shareServerDropClient(h, m.client)
        return send(socket, Kind.Ok, m.id, m.exportId, m.client)
      case Kind.Close:
        served.delete(m.exportId)
        return native.shareServerClose(h, () => send(socket, Kind.Ok, m.id, m.exportId, 0))
      case Kind.Stats:
        return send(socket, Kind.Ok, m.id, m.exportId, 0, Buffer.from(JSON.stringify(native.shareServerStats(h))))
      default:
        throw Object.assign(new Error(`unknown message kind ${m.kind}`), { code: 'EINVAL' })
    }
  } catch (err) {
    fail(m, err)
  }
}

const reader = new MessageReader(handle)
socket.on('data', (chunk: Buffer) => {
  try {
    reader.push(chunk)
  } catch (err) {
    process.stderr.write(`pxd share executor: ${messageOf(err)}\n`)
    process.exit(1)
  }
})
// The daemon went (or closed the socket): nothing is served any more.
socket.on('end', () => process.exit(0))
socket.on('error', () => process.exit(0))
