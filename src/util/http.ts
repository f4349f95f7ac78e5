/** Small HTTP helpers shared by the plugin socket and the API: capped JSON bodies, replies. */
import http, { type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { pxdError } from '../errors'

export const MAX_BODY_BYTES = 1024 * 1024
/** A client that has not sent its whole request by then is cut off. */
export const REQUEST_TIMEOUT_MS = 30_000
/** Headers come first and are small: a client still sending them after this is cut off. */
export const HEADERS_TIMEOUT_MS = 10_000
/** How often Node looks for clients past those limits (its default, 30 s, lets one linger a minute). */
const TIMEOUT_CHECK_MS = 1_000

/** An HTTP server with the timeouts above; slow or stalled clients cannot hold connections. */
export function createBoundedServer(handler: (req: IncomingMessage, res: ServerResponse) => void): Server {
  const server = http.createServer({ connectionsCheckingInterval: TIMEOUT_CHECK_MS }, handler)
  server.requestTimeout = REQUEST_TIMEOUT_MS
  server.headersTimeout = HEADERS_TIMEOUT_MS
  server.keepAliveTimeout = 5_000
  return server
}

export function readBody(req: IncomingMessage, maxBytes = MAX_BODY_BYTES): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'])
    if (Number.isFinite(declared) && declared > maxBytes) {
      reject(pxdError('BODY_TOO_LARGE', `request body of ${declared} bytes is over the ${maxBytes}-byte limit`))
      req.resume()
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    let failed = false
    req.on('data', (chunk: Buffer) => {
      if (failed) return
      size += chunk.length
      if (size > maxBytes) {
        failed = true
        reject(pxdError('BODY_TOO_LARGE', `request body is over the ${maxBytes}-byte limit`))
        return
      }
      chunks.push(chunk)
    })
    req.on('end', () => failed || resolve(Buffer.concat(chunks)))
    req.on('error', (err) => failed || reject(err))
  })
}

/** Parse a JSON object body; an empty body is an empty object (Docker sends none for some calls). */
export async function readJsonObject(req: IncomingMessage): Promise<Record<string, unknown>> {
  const body = await readBody(req)
  const text = body.toString('utf8').trim()
  if (text === '') return {}
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw pxdError('MALFORMED_REQUEST', `request body is not valid JSON: ${(err as Error).message}`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw pxdError('MALFORMED_REQUEST', 'request body must be a JSON object')
  }
  return parsed as Record<string, unknown>
}

export function sendJson(res: ServerResponse, status: number, body: unknown, contentType = 'application/json'): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(text) })
  res.end(text)
}

/** Bound how long a slow client may hold a connection. */
/** A string field, or undefined when absent; any other type is a MALFORMED_REQUEST. */
export function optionalString(body: Record<string, unknown>, field: string): string | undefined {
  const value = body[field]
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'string') throw pxdError('MALFORMED_REQUEST', `field "${field}" must be a string`)
  return value
}

export function requiredString(body: Record<string, unknown>, field: string): string {
  const value = optionalString(body, field)
  if (value === undefined || value === '') throw pxdError('MALFORMED_REQUEST', `field "${field}" is required`)
  return value
}
