/**
 * `npm run bench:link`: the peer link alone, between two processes on loopback. The
 * parent holds a PeerLinks client, a forked child a PeerServer whose handler does nothing:
 * what is left is framing, the WebSocket, the socket and two event loops. Writes of each
 * size, with 1, 2 and 4 in flight, for `--seconds` each; prints MB/s and round-trip p50/p99.
 * `--psk`: the same rows over plain WebSocket and over TLS-PSK (the daemons' default), with
 * the ratio TLS-PSK / plain.
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

async function serve(secret: Buffer, psk: boolean): Promise<void> {
  const server = new PeerServer({
    nodeId: 'server', clusterId: CLUSTER, secret, log: pino({ level: 'silent' }), psk,
    handler: { handle: async () => undefined },
  })
  const { port } = await server.listen('127.0.0.1', 0)
  process.send!({ port })
  process.on('disconnect', () => { void server.close().then(() => process.exit(0)) })
}

interface Row { size: number; depth: number; mbps: number; p50: string; p99: string }

async function measure(seconds: number, psk: boolean): Promise<Row[]> {
  const rows: Row[] = []
  const child = fork(__filename, ['--serve', ...(psk ? ['--psk'] : [])], { execArgv: [...DAEMON_NODE_FLAGS], env: { ...process.env, PXD_BENCH_LINK_SECRET: SECRET.toString('hex') } })
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m: { port: number }) => resolve(m.port))
    child.once('exit', (code) => reject(new Error(`the server process exited (${code})`)))
  })
  const links = new PeerLinks({ nodeId: 'client', clusterId: CLUSTER, secret: SECRET, log: pino({ level: 'silent' }), psk })
  try {
    const link = links.link('server', `127.0.0.1:${port}`)
    await link.request({ t: 'flush', vol: 'v', epoch: 1 })
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
        rows.push({ size, depth, mbps: (lat.length * size) / elapsed / 1e6, p50: pct(0.5), p99: pct(0.99) })
      }
    }
  } finally {
    await links.close()
    child.disconnect()
  }
  return rows
}

async function report(seconds: number, compare: boolean): Promise<void> {
  process.stdout.write(`Peer link, two processes on loopback, no-op handler, ${seconds} s per row\n\n`)
  const plain = await measure(seconds, false)
  if (!compare) {
    process.stdout.write('| write size | in flight | MB/s | round trip p50, us | p99, us |\n| ---: | ---: | ---: | ---: | ---: |\n')
    for (const r of plain) process.stdout.write(`| ${r.size / 1024} KiB | ${r.depth} | ${r.mbps.toFixed(0)} | ${r.p50} | ${r.p99} |\n`)
    return
  }
  const psk = await measure(seconds, true)
  process.stdout.write('| write size | in flight | plain MB/s | TLS-PSK MB/s | TLS-PSK / plain | plain p50, us | TLS-PSK p50, us |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n')
  plain.forEach((r, i) => {
    const t = psk[i]!
    process.stdout.write(`| ${r.size / 1024} KiB | ${r.depth} | ${r.mbps.toFixed(0)} | ${t.mbps.toFixed(0)} | ${(t.mbps / r.mbps).toFixed(2)} | ${r.p50} | ${t.p50} |\n`)
  })
}

if (process.argv.includes('--serve')) {
  void serve(Buffer.from(process.env.PXD_BENCH_LINK_SECRET ?? '', 'hex'), process.argv.includes('--psk'))
} else {
  const i = process.argv.indexOf('--seconds')
  const seconds = i > 0 ? Number(process.argv[i + 1]) : 3
  if (!(seconds > 0)) {
    process.stderr.write('usage: npm run bench:link -- [--seconds N] [--psk]\n')
    process.exit(2)
  }
  report(seconds, process.argv.includes('--psk')).then(() => process.exit(0), (err) => {
    process.stderr.write(`bench:link: ${(err as Error).message}\n`)
    process.exit(1)
  })
}
