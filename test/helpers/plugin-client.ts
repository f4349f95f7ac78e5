/** Speak the Docker volume plugin protocol over a unix socket, the way Docker does. */
import http from 'node:http'

export interface PluginReply {
  status: number
  contentType: string
  body: Record<string, unknown>
  raw: string
}

export function pluginCall(socketPath: string, endpoint: string, body?: unknown, rawBody?: string | Buffer): Promise<PluginReply> {
  const payload = rawBody ?? (body === undefined ? '' : JSON.stringify(body))
  return new Promise((resolve, reject) => {
    const req = http.request({
      socketPath,
      path: endpoint,
      method: 'POST',
      // Docker sends no Content-Type, only this Accept header.
      headers: { Accept: 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': Buffer.byteLength(payload) },
      timeout: 180_000,
      // One connection per call, as Docker makes them: no keep-alive socket that the
      // server may close while it sits idle in a pool.
      agent: false,
    }, (res) => {
      let raw = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { raw += d })
      res.on('end', () => {
        let parsed: Record<string, unknown> = {}
        try {
          parsed = raw ? (JSON.parse(raw) as Record<string, unknown>) : {}
        } catch {
          parsed = { unparsable: raw }
        }
        resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body: parsed, raw })
      })
      res.on('error', reject)
    })
    // A server may cut off a request it refused (a body over its cap) while we still
    // write: the reply is what the test checks, so a late EPIPE on the socket is not news.
    req.on('socket', (socket) => socket.on('error', () => undefined))
    req.on('timeout', () => req.destroy(new Error(`plugin call ${endpoint} timed out`)))
    req.on('error', reject)
    req.end(payload)
  })
}
