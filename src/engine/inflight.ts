/**
 * The writes in flight on one volume and the copy locks, shared by the data path and the
 * copies (resync, reconcile, repair):
 *   - a write that overlaps one still in flight waits for it, since each replica may apply
 *     two writes in flight in either order: so every replica ends with the later write's
 *     bytes;
 *   - a copy holds back the writes that overlap its region, and starts only after the
 *     overlapping writes already in flight have landed, so it never copies bytes a write is
 *     changing.
 * Copies of disjoint regions may hold their locks at once (a resync keeps several in
 * flight); overlapping ones wait for each other. Writes are added in the order of their
 * sequence numbers, so the first one in the set is the oldest still in flight (flush needs it).
 */
interface InflightWrite {
  start: number
  end: number
  seq: number
  landed: Promise<void>
  /** Resolves once the write has landed or failed. */
  settled: Promise<void>
}

interface CopyLock {
  start: number
  end: number
  done: Promise<void>
}

export class InflightWrites {
  readonly #writes = new Set<InflightWrite>()
  readonly #locks = new Set<CopyLock>()

  /** What a write of bytes [start, end) must wait for before it starts, or undefined. */
  blocker(start: number, end: number): Promise<void> | undefined {
    for (const lock of this.#locks) {
      if (start < lock.end && end > lock.start) return lock.done
    }
    for (const w of this.#writes) {
      if (start < w.end && end > w.start) return w.settled
    }
    return undefined
  }

  /** Track a write numbered `seq` (higher than any added before) that has started; it is forgotten once it settles. */
  add(start: number, end: number, landed: Promise<void>, seq: number): void {
    const write: InflightWrite = { start, end, seq, landed, settled: landed.then(noop, noop) }
    this.#writes.add(write)
    const forget = () => { this.#writes.delete(write) }
    landed.then(forget, forget)
  }

  /** The sequence number of the oldest write still in flight, or undefined. */
  oldestSeq(): number | undefined {
    for (const w of this.#writes) return w.seq
    return undefined
  }

  /** Resolves once every write in flight now has landed or failed. */
  landed(): Promise<unknown> {
    return Promise.allSettled([...this.#writes].map((w) => w.landed))
  }

  /** Run `fn` on a region with overlapping writes held back and the overlapping ones in flight landed first. */
  async withCopyLock(start: number, length: number, fn: () => Promise<void>): Promise<void> {
    const end = start + length
    for (let held = this.#overlappingLock(start, end); held; held = this.#overlappingLock(start, end)) await held.done
    let release!: () => void
    const done = new Promise<void>((resolve) => { release = resolve })
    const lock: CopyLock = { start, end, done }
    this.#locks.add(lock)
    try {
      await Promise.allSettled([...this.#writes].filter((w) => start < w.end && end > w.start).map((w) => w.landed))
      await fn()
    } finally {
      this.#locks.delete(lock)
      release()
    }
  }

  #overlappingLock(start: number, end: number): CopyLock | undefined {
    for (const lock of this.#locks) if (start < lock.end && end > lock.start) return lock
    return undefined
  }
}

function noop(): void {}
