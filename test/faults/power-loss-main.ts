/**
 * The power-loss file system as a process of its own, so that killing the daemon under
 * test leaves it running:  node power-loss-main.js BACKING MOUNTPOINT CONTROL_SOCKET
 * Control: HTTP on the unix socket; POST /cut[?seed=N], /stall?ms=N, /fail-fsync?count=N,
 * GET /status; each answers JSON. SIGTERM unmounts and exits.
 */
import { createServer } from 'node:http'
import { rmSync } from 'node:fs'
import { PowerLossFs } from './power-loss-fs'

async function main(): Promise<void> {
  const [backing, mountpoint, socket] = process.argv.slice(2)
  if (!backing || !mountpoint || !socket) throw new Error('usage: power-loss-main BACKING MOUNTPOINT CONTROL_SOCKET')
  const fs = new PowerLossFs(backing, mountpoint)
  await fs.mount()
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://control')
    const number = (name: string) => {
      const v = url.searchParams.get(name)
      return v === null ? undefined : Number(v)
    }
    let body: unknown
    try {
      if (req.method === 'POST' && url.pathname === '/cut') body = fs.cut(number('seed'))
      else if (req.method === 'POST' && url.pathname === '/stall') body = (fs.stall(number('ms') ?? 0), fs.status())
      else if (req.method === 'POST' && url.pathname === '/fail-fsync') body = (fs.failFsyncs(number('count') ?? 1), fs.status())
      else if (req.method === 'GET' && url.pathname === '/status') body = fs.status()
      else {
        res.writeHead(404).end()
        return
      }
    } catch (err) {
      res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: String(err) }))
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body))
  })
  rmSync(socket, { force: true })
  await new Promise<void>((resolve) => server.listen(socket, resolve))
  process.stdout.write('ready\n')
  const stop = async () => {
    server.close()
    await fs.unmount().catch((err) => process.stderr.write(`unmount failed: ${String(err)}\n`))
    process.exit(0)
  }
  process.on('SIGTERM', () => void stop())
  process.on('SIGINT', () => void stop())
}

main().catch((err) => {
  process.stderr.write(`power-loss-fs: ${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
