/**
 * The daemon's end of its share executor process (executor-main.ts says why it is a
 * process): started on the first export, restarted if it dies. Exports are numbered by the
 * process; after a restart each is opened again from its root (the file system's handles
 * do not change), the operations that may run twice are sent again, and the others are
 * answered EIO (they may have been applied).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { Kind, MessageReader, send, type Message } from './executor-wire'
import { appliesOnce, errorReply } from './wire'

const MAIN = path.join(__dirname, 'executor-main.js')
const EIO = 5
const RESTART_DELAY_MS = 200

export interface ExecutorStats { requests: number; bytesRead: number; bytesWritten: number; openFds: number }

interface Pending {
  kind: Kind
  exp: ExportSlot | undefined
  client: number
  payload: Uint8Array | undefined
  resolve: (m: Message) => void
  reject: (err: Error) => void
}

interface ExportSlot { root: string; tag: string; threads: number; id: number | undefined; opening: Promise<void> | undefined }

export class ShareExecutor {
  readonly #log: Logger
  readonly #pending = new Map<number, Pending>()
  readonly #exports = new Set<ExportSlot>()
  #child: ChildProcess | undefined
  #socket: Socket | undefined
  #starting: Promise<void> | undefined
  #nextId = 1
  #stopped = false

  constructor(log: Logger) {
    this.#log = log
  }

  /** Serve the file system mounted at `root`; resolves with a handle for the other calls. */
  async open(root: string, tag: string, threads: number): Promise<ExportSlot> {
    const exp: ExportSlot = { root, tag, threads, id: undefined, opening: undefined }
    await this.#open(exp)
    this.#exports.add(exp)
    return exp
  }

  /** One wire request; resolves with its wire reply (errors inside it), never rejects. */
  async exec(exp: ExportSlot, client: number, request: Uint8Array): Promise<Uint8Array> {
    try {
      return (await this.#call(Kind.Exec, exp, client, request)).payload
    } catch (err) {
      this.#log.warn({ err }, 'share executor request failed')
      return errorReply(EIO)
    }
  }

  async drop(exp: ExportSlot, client: number): Promise<void> {
    await this.#call(Kind.Drop, exp, client).catch(() => undefined)
  }

  async stats(exp: ExportSlot): Promise<ExecutorStats> {
    return JSON.parse((await this.#call(Kind.Stats, exp, 0)).payload.toString('utf8')) as ExecutorStats
  }

  async close(exp: ExportSlot): Promise<void> {
    this.#exports.delete(exp)
    if (exp.id !== undefined && this.#child) await this.#call(Kind.Close, exp, 0).catch(() => undefined)
  }

  /** Ends the process (the daemon stops). */
  async stop(): Promise<void> {
    this.#stopped = true
    const child = this.#child
    if (!child || child.exitCode !== null) return
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    this.#socket?.end()
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    await exited
    clearTimeout(timer)
  }

  async #open(exp: ExportSlot): Promise<void> {
    exp.opening ??= (async () => {
      const payload = Buffer.from(JSON.stringify({ root: exp.root, tag: exp.tag, threads: exp.threads }))
      const reply = await this.#call(Kind.Open, undefined, 0, payload)
      exp.id = reply.exportId
    })().finally(() => { exp.opening = undefined })
    return exp.opening
  }

  async #call(kind: Kind, exp: ExportSlot | undefined, client: number, payload?: Uint8Array): Promise<Message> {
    await this.#started()
    if (exp && exp.id === undefined) await this.#open(exp)
    return new Promise<Message>((resolve, reject) => {
      const id = this.#nextId++
      this.#pending.set(id, { kind, exp, client, payload, resolve, reject })
      send(this.#socket!, kind, id, exp?.id ?? 0, client, payload)
    })
  }

  #started(): Promise<void> {
    if (this.#stopped) return Promise.reject(pxdError('DAEMON_STOPPING', 'the share executor is stopped'))
    if (this.#socket && this.#child?.exitCode === null) return Promise.resolve()
    this.#starting ??= new Promise<void>((resolve, reject) => {
      const child = spawn(process.execPath, [MAIN], { stdio: ['ignore', 'inherit', 'inherit', 'pipe'] })
      const socket = child.stdio[3] as Socket
      const reader = new MessageReader((m) => this.#onReply(m))
      socket.on('data', (chunk: Buffer) => reader.push(chunk))
      socket.on('error', () => undefined)
      child.once('error', (err) => {
        this.#starting = undefined
        reject(pxdError('PRECONDITION', `cannot start the share executor: ${err.message}`, err))
      })
      child.once('spawn', () => {
        this.#child = child
        this.#socket = socket
        this.#starting = undefined
        this.#log.info({ executorPid: child.pid }, 'share executor started')
        resolve()
      })
      child.once('exit', (code, signal) => this.#onExit(child, code, signal))
    })
    return this.#starting
  }

  #onReply(m: Message): void {
    const p = this.#pending.get(m.id)
    if (!p) return
    this.#pending.delete(m.id)
    if (m.kind === Kind.Ok) return p.resolve(m)
    const { code, message } = JSON.parse(m.payload.toString('utf8')) as { code: string; message: string }
    p.reject(Object.assign(pxdError('IO_ERROR', message), { errno: code }))
  }

  #onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.#child !== child) return
    this.#child = undefined
    this.#socket = undefined
    for (const exp of this.#exports) exp.id = undefined
    const pending = [...this.#pending.values()]
    this.#pending.clear()
    if (this.#stopped) {
      for (const p of pending) p.reject(pxdError('DAEMON_STOPPING', 'the share executor stopped'))
      return
    }
    this.#log.error({ code, signal, pending: pending.length }, 'the share executor ended; starting it again')
    setTimeout(() => {
      for (const p of pending) {
        const again = p.kind === Kind.Exec && p.payload !== undefined && !appliesOnce(p.payload)
        if (!again || !p.exp || !this.#exports.has(p.exp)) {
          p.reject(pxdError('IO_ERROR', 'the share executor ended during the request'))
          continue
        }
        this.#call(p.kind, p.exp, p.client, p.payload).then(p.resolve, p.reject)
      }
    }, RESTART_DELAY_MS).unref()
  }
}

export type { ExportSlot }
