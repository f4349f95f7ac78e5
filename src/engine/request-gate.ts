/**
 * The engine's requests in flight, and the gate a grow closes: `track` counts a request
 * until it settles, `idle` resolves once none is in flight (close and grow wait for that),
 * and while `hold` runs its work, requests asked for meanwhile wait (`held`) and go on once it
 * is done. Nothing here allocates on the data path but the request's own `finally`.
 */
export class RequestGate {
  #inflight = 0
  #idleWaiters: Array<() => void> = []
  #held: Promise<void> | undefined

  /** While a hold runs: what a new request waits for first (undefined otherwise). */
  get held(): Promise<void> | undefined {
    return this.#held
  }

  track(p: Promise<void>): Promise<void> {
    this.#inflight++
    return p.finally(() => {
      if (--this.#inflight === 0) for (const wake of this.#idleWaiters.splice(0)) wake()
    })
  }

  idle(): Promise<void> {
    if (this.#inflight === 0) return Promise.resolve()
    return new Promise<void>((resolve) => { this.#idleWaiters.push(resolve) })
  }

  /** Run `work` with new requests held back and none in flight; one hold at a time (false: one runs). */
  async hold(work: () => Promise<void>): Promise<boolean> {
    if (this.#held) return false
    let done!: () => void
    this.#held = new Promise<void>((resolve) => { done = resolve })
    try {
      await this.idle()
      await work()
      return true
    } finally {
      this.#held = undefined
      done()
    }
  }
}
