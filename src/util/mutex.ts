/** A promise mutex: state changes of one object run one at a time, in arrival order. */
export class Mutex {
  #tail: Promise<void> = Promise.resolve()

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const previous = this.#tail
    let release!: () => void
    this.#tail = new Promise<void>((resolve) => { release = resolve })
    try {
      await previous
      return await fn()
    } finally {
      release()
    }
  }
}

/** One mutex per key (a volume name), created on demand and dropped when idle. */
export class KeyedMutex {
  readonly #locks = new Map<string, { mutex: Mutex; users: number }>()

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    let entry = this.#locks.get(key)
    if (!entry) {
      entry = { mutex: new Mutex(), users: 0 }
      this.#locks.set(key, entry)
    }
    entry.users++
    try {
      return await entry.mutex.run(fn)
    } finally {
      if (--entry.users === 0) this.#locks.delete(key)
    }
  }
}
