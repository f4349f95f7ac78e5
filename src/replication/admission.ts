/**
 * Admission of peer connections that have not authenticated yet.
 *
 * A TCP connection to the peer port takes a slot from the moment it is accepted until its
 * handshake completes (or it closes). Slots are capped per source address and in total, so
 * one host flooding the port with idle or garbage connections fills only its own share and
 * a real peer reconnecting from another address still gets in. Every slot has one deadline,
 * counted from the TCP accept: TLS, the WebSocket upgrade and the secret handshake must all
 * finish inside it, so a slot is never held longer than that.
 *
 * Refusals are logged through RefusalLog: the first refusal of a (reason, address) pair in an
 * interval is logged at once, the rest are counted and summed up in one line when the
 * interval ends ("refused N connections from ADDR in the last Xs"), so a flood cannot flood
 * the log as well.
 */
import type { Logger } from 'pino'
import { pxdError } from '../errors'

export const DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS = 8
export const DEFAULT_REFUSAL_LOG_INTERVAL_MS = 10_000

export interface AdmissionLimits {
  /** Unauthenticated connections one source address may hold at once. */
  perAddress: number
  /** Unauthenticated connections the server holds at once, all addresses together. */
  total: number
}

export type Refusal = 'per-address' | 'total'

export class Admission {
  readonly #limits: AdmissionLimits
  readonly #byAddress = new Map<string, number>()
  #total = 0

  constructor(limits: AdmissionLimits) {
    for (const [name, v] of Object.entries(limits)) {
      if (!Number.isInteger(v) || v < 1) throw pxdError('INVALID_ARGUMENT', `the ${name} limit on unauthenticated peer connections must be a positive integer, not ${String(v)}`)
    }
    this.#limits = { ...limits }
  }

  /** Unauthenticated connections held now (all addresses). */
  get total(): number {
    return this.#total
  }

  held(address: string): number {
    return this.#byAddress.get(address) ?? 0
  }

  /** Takes a slot for `address`, or says which limit refuses it. */
  admit(address: string): Refusal | undefined {
    const held = this.#byAddress.get(address) ?? 0
    if (held >= this.#limits.perAddress) return 'per-address'
    if (this.#total >= this.#limits.total) return 'total'
    this.#byAddress.set(address, held + 1)
    this.#total++
    return undefined
  }

  /** Gives back a slot `admit` granted. Call once per granted slot. */
  release(address: string): void {
    const held = this.#byAddress.get(address) ?? 0
    if (held === 0) return
    if (held === 1) this.#byAddress.delete(address)
    else this.#byAddress.set(address, held - 1)
    this.#total--
  }
}

const REASONS: Record<string, string> = {
  'per-address': 'too many unauthenticated connections from this address',
  total: 'too many unauthenticated connections at once',
  deadline: 'closed: the handshake did not complete within the deadline after connecting',
}

/** What a RefusalLog counts: its first line's message, and the plural noun of its summaries. */
export interface RefusalKind {
  message: string
  noun: string
}

const CONNECTIONS: RefusalKind = { message: 'peer connection refused', noun: 'connections' }

/**
 * Rate-limited warnings for refusals: one line per (reason, address) per interval, plus a
 * count. Refused connections by default; `kind` names anything else refused by source.
 */
export class RefusalLog {
  readonly #log: Logger
  readonly #intervalMs: number
  readonly #kind: RefusalKind
  /** Refusals counted (not logged) in the current interval, by reason and address. */
  readonly #suppressed = new Map<string, { reason: string; address: string; count: number }>()
  /** Keys already logged once in the current interval. */
  readonly #seen = new Set<string>()
  #timer: NodeJS.Timeout | undefined

  constructor(log: Logger, intervalMs = DEFAULT_REFUSAL_LOG_INTERVAL_MS, kind: RefusalKind = CONNECTIONS) {
    this.#log = log
    this.#intervalMs = intervalMs
    this.#kind = kind
  }

  /** Notes one refusal; `reason` is a short key, `detail` goes with the first line only. */
  refused(reason: string, address: string, detail: Record<string, unknown> = {}): void {
    const key = `${reason}\0${address}`
    if (!this.#seen.has(key)) {
      this.#seen.add(key)
      this.#log.warn({ remote: address, reason: REASONS[reason] ?? reason, ...detail }, this.#kind.message)
    } else {
      const entry = this.#suppressed.get(key)
      if (entry) entry.count++
      else this.#suppressed.set(key, { reason, address, count: 1 })
    }
    if (!this.#timer) {
      this.#timer = setTimeout(() => this.flush(), this.#intervalMs)
      this.#timer.unref()
    }
  }

  /** Ends the interval: logs one summary per (reason, address) that had refusals beyond the first. */
  flush(): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    const seconds = Number((this.#intervalMs / 1000).toFixed(1))
    for (const { reason, address, count } of this.#suppressed.values()) {
      this.#log.warn({ remote: address, reason: REASONS[reason] ?? reason, suppressed: count },
        `refused ${count} more ${this.#kind.noun} from ${address} in the last ${seconds}s`)
    }
    this.#suppressed.clear()
    this.#seen.clear()
  }

  /** Logs what is pending and stops the timer (server close). */
  close(): void {
    this.flush()
  }
}
