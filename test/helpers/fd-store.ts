/**
 * A stand-in for systemd's file-descriptor store, for tests where no systemd runs: a
 * datagram socket given to pxd as $NOTIFY_SOCKET that keeps the descriptors sent with
 * FDSTORE=1 (by FDNAME) and lets go of them on FDSTOREREMOVE=1, as the service manager does.
 * `startWith` gives what systemd sets for the next start of the service: LISTEN_FDS and
 * LISTEN_FDNAMES, the descriptors as 3, 4, ..., and LISTEN_PID set to the daemon's own pid
 * (an `sh -c` prefix that execs the daemon).
 */
import path from 'node:path'
import { native } from '../../src/native/binding'

export interface FdStore {
  socket: string
  /** Every message received, in order. */
  messages: string[]
  /** The stored descriptor of `name`, once it arrives. */
  waitFor(name: string, timeoutMs?: number): Promise<number>
  startWith(): { env: Record<string, string>; commandPrefix: string[]; inheritFds: number[] }
  close(): Promise<void>
}

export function startFdStore(dir: string): FdStore {
  const socket = path.join(dir, 'notify.sock')
  const sock = native.bindDatagram(socket)
  const stored = new Map<string, number>()
  const messages: string[] = []
  let closed = false
  const loop = (async () => {
    while (!closed) {
      let m: { payload: string; fds: number[] }
      try {
        m = await native.receiveDatagram(sock, 200)
      } catch {
        continue
      }
      messages.push(m.payload)
      const fields = new Map(m.payload.split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const))
      const name = fields.get('FDNAME') ?? 'stored'
      if (fields.get('FDSTORE') === '1' && m.fds.length > 0) {
        const old = stored.get(name)
        if (old !== undefined) native.closeDescriptor(old)
        stored.set(name, m.fds[0]!)
        for (const extra of m.fds.slice(1)) native.closeDescriptor(extra)
      } else {
        for (const fd of m.fds) native.closeDescriptor(fd)
      }
      if (fields.get('FDSTOREREMOVE') === '1' && stored.has(name)) {
        native.closeDescriptor(stored.get(name)!)
        stored.delete(name)
      }
    }
  })()
  return {
    socket,
    messages,
    waitFor: async (name, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs
      while (!stored.has(name)) {
        if (Date.now() > deadline) throw new Error(`nothing stored as ${name} within ${timeoutMs} ms; messages: ${JSON.stringify(messages)}`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      return stored.get(name)!
    },
    startWith: () => {
      const names = [...stored.keys()]
      return {
        env: { NOTIFY_SOCKET: socket, LISTEN_FDS: String(names.length), LISTEN_FDNAMES: names.join(':') },
        commandPrefix: ['sh', '-c', 'export LISTEN_PID=$$; exec "$0" "$@"'],
        inheritFds: names.map((n) => stored.get(n)!),
      }
    },
    close: async () => {
      closed = true
      await loop
      native.closeDescriptor(sock)
      for (const fd of stored.values()) native.closeDescriptor(fd)
      stored.clear()
    },
  }
}
