/**
 * A TCP relay in the test process that keeps every byte passing through it, both ways: a
 * node that advertises the relay's port has all its incoming peer links captured.
 */
import { connect, createServer, type AddressInfo, type Server } from 'node:net'

export interface CapturingRelay {
  port: number
  /** Every byte relayed so far, both directions, in arrival order. */
  bytes(): Buffer
  /** How many bytes have been relayed. */
  readonly length: number
  close(): Promise<void>
}

/** Relay connections to 127.0.0.1:`target()` (asked per connection: the target may start later). */
export async function startCapturingRelay(target: () => number): Promise<CapturingRelay> {
  const wire: Buffer[] = []
  let length = 0
  const server: Server = createServer((client) => {
    const upstream = connect(target(), '127.0.0.1')
    const keep = (d: Buffer) => { wire.push(d); length += d.length }
    client.on('data', keep)
    upstream.on('data', keep)
    client.pipe(upstream).pipe(client)
    client.on('error', () => upstream.destroy())
    upstream.on('error', () => client.destroy())
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    bytes: () => Buffer.concat(wire),
    get length() { return length },
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.unref()
    }),
  }
}
