/**
 * The running pxd's side of `pxd --takeover` (inherit.ts has the successor's): a unix
 * socket in the run dir (0600, in a root-only dir) where a successor asks for the FUSE
 * session. One request at a time: {"takeover": "<run-dir>/takeover-<pid>.sock", ...} on one
 * line. The daemon then stops as for a handoff (every volume stays mounted) and sends the
 * descriptor to that datagram socket; the connection stays open until this process let go
 * of everything, and its closing tells the successor to go on. A failure is one line
 * {"error": "..."} before the close; the daemon then stops as usual.
 */
import net from 'node:net'
import path from 'node:path'
import { promises as fs } from 'node:fs'
import type { Logger } from 'pino'
import { messageOf } from '../errors'
import { native } from '../native/binding'
import { FD_NAME, handoffSocketOf, type NamedFd } from './inherit'
import type { HandedKeys } from './handed-keys'

export interface HandoffRequest {
  /** Sends the session's descriptors (the FUSE session's first) to the successor, with the keys it could not open itself. */
  send(fds: NamedFd[], keys: HandedKeys): void
  /** The successor's version, as it says. */
  version: string
}

export class HandoffServer {
  readonly #path: string
  readonly #runDir: string
  readonly #log: Logger
  readonly #onRequest: (req: HandoffRequest) => Promise<void>
  readonly #server: net.Server
  #busy = false

  constructor(runDir: string, log: Logger, onRequest: (req: HandoffRequest) => Promise<void>) {
    this.#runDir = runDir
    this.#path = handoffSocketOf(runDir)
    this.#log = log
    this.#onRequest = onRequest
    this.#server = net.createServer((conn) => this.#accept(conn))
  }

  async listen(): Promise<void> {
    await fs.rm(this.#path, { force: true })
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(this.#path, () => resolve())
    })
    await fs.chmod(this.#path, 0o600)
  }

  /**
   * Stops listening, without waiting for connections to end: a successor's stays open
   * until this process ends (its close is the signal to go on).
   */
  async close(): Promise<void> {
    this.#server.close()
    await fs.rm(this.#path, { force: true })
  }

  #accept(conn: net.Socket): void {
    let text = ''
    conn.setEncoding('utf8')
    conn.on('error', () => undefined)
    conn.on('data', (chunk: string) => {
      text += chunk
      const nl = text.indexOf('\n')
      if (nl < 0) {
        if (text.length > 4096) conn.destroy()
        return
      }
      conn.removeAllListeners('data')
      void this.#handle(conn, text.slice(0, nl))
    })
  }

  async #handle(conn: net.Socket, line: string): Promise<void> {
    let inbox: string
    let version: string
    try {
      const req = JSON.parse(line) as { takeover?: unknown; version?: unknown }
      inbox = String(req.takeover)
      version = String(req.version ?? 'unknown')
      if (path.dirname(inbox) !== this.#runDir || !/^takeover-\d+\.sock$/.test(path.basename(inbox))) throw new Error(`not a takeover socket in ${this.#runDir}: ${inbox}`)
    } catch (err) {
      conn.end(JSON.stringify({ error: `bad takeover request: ${messageOf(err)}` }) + '\n')
      return
    }
    if (this.#busy) {
      conn.end(JSON.stringify({ error: 'another takeover is already running' }) + '\n')
      return
    }
    this.#busy = true
    this.#log.info({ successor: version }, 'a successor asked for the FUSE session: handing over')
    try {
      await this.#onRequest({
        version,
        send: (fds, keys) => native.sendDatagram(inbox, JSON.stringify({ fdname: FD_NAME, fdnames: fds.map((f) => f.name), keys }), fds.map((f) => f.fd)),
      })
    } catch (err) {
      this.#log.error({ err }, 'the handoff failed')
      conn.end(JSON.stringify({ error: messageOf(err) }) + '\n')
    }
  }
}
