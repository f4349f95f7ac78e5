/**
 * `npm run bench:link`: the peer link alone, between two processes on loopback. The
 * parent holds a PeerLinks client, a forked child a PeerServer whose handler does nothing:
 * what is left is framing, the WebSocket, the socket and two event loops. Writes of each
 * size, with 1, 2 and 4 in flight, for `--seconds` each; prints MB/s and round-trip p50/p99.
 * A benchmark: it asserts nothing.
 */
import { fork } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import pino from 'pino'
import { DAEMON_NODE_FLAGS } from '../src/cli/node-flags'
import { PeerLinks, PeerServer } from '../src/replication'

const SECRET = randomBytes(32)
const CLUSTER = 'bench-link'
const SIZES = [4096, 128 * 1024, 1024 * 1024]
const DEPTHS = [1, 2, 4]

async function serve(secret: Buffer): Promise<void> {
  const server = new PeerServer({
    nodeId: 'server', clusterId: CLUSTER, secret, log: pino({ level: 'silent' }),
    handler: { handle: async () => undefined },
  })
  const { port } = await server.listen('127.0.0.1', 0)
  process.send!({ port })
  process.on('disconnect', () => { void server.close().then(() => process.exit(0)) })
}

async function measure(seconds: number): Promise<void> {
  const child = fork(__filename, ['--serve'], { execArgv: [...DAEMON_NODE_FLAGS], env: { ...process.env, PXD_BENCH_LINK_SECRET: SECRET.toString('hex') } })
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m: { port: number }) => resolve(m.port))
    child.once('exit', (code) => reject(new Error(`the server process exited (${code})`)))
  })
  const links = new PeerLinks({ nodeId: 'client', clusterId: CLUSTER, secret: SECRET, log: pino({ level: 'silent' }) })
  try {
    const link = links.link('server', `127.0.0.1:${port}`)
    await link.request({ t: 'flush', vol: 'v', epoch: 1 })
    process.stdout.write(`Peer link, two processes on loopback, no-op handler, ${seconds} s per row\n\n`)
    process.stdout.write('| write size | in flight | MB/s | round trip p50, us | p99, us |\n| ---: | ---: | ---: | ---: | ---: |\n')
    for (const size of SIZES) {
      const data = randomBytes(size)
      for (const depth of DEPTHS) {
        const lat: number[] = []
        let seq = 0
        const start = performance.now()
        const end = start + seconds * 1000
        await Promise.all(Array.from({ length: depth }, async () => {
          while (performance.now() < end) {
            const t = performance.now()
            await link.request({ t: 'write', vol: 'v', epoch: 1, seq: ++seq, offset: 0, data })
            lat.push((performance.now() - t) * 1000)
          }
        }))
        const elapsed = (performance.now() - start) / 1000
        lat.sort((a, b) => a - b)
        const pct = (p: number) => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))]!.toFixed(0)
        process.stdout.write(`| ${size / 1024} KiB | ${depth} | ${((lat.length * size) / elapsed / 1e6).toFixed(0)} | ${pct(0.5)} | ${pct(0.99)} |\n`)
      }
    }
  } finally {
    await links.close()
    child.disconnect()
  }
}

if (process.argv.includes('--serve')) {
  void serve(Buffer.from(process.env.PXD_BENCH_LINK_SECRET ?? '', 'hex'))
} else {
  const i = process.argv.indexOf('--seconds')
  const seconds = i > 0 ? Number(process.argv[i + 1]) : 3
  if (!(seconds > 0)) {
    process.stderr.write('usage: npm run bench:link -- [--seconds N]\n')
    process.exit(2)
  }
  measure(seconds).then(() => process.exit(0), (err) => {
    process.stderr.write(`bench:link: ${(err as Error).message}\n`)
    process.exit(1)
  })
}
