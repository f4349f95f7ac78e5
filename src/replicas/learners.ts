/**
 * The members a resync is bringing into one volume's set (replica-set.ts has the set and
 * its transitions): which replicas are joining (reserved, being opened), learners (getting
 * every write) or committing (the kvdb write that makes them in sync is under way), the
 * first failure each had (a learner with one is never promoted), and a committing member's
 * window: the ranges it failed and what the requests it failed wait on, settled by the
 * commit's outcome. The in-sync side, dirty maps and unflushed regions stay with the set.
 */
import type { Replica } from './replica'

/** A failed write's [offset, length] (the set's WriteRange). */
type Range = readonly [number, number]

/** A committing member's window: the ranges it failed, and what the requests it failed wait on. */
export interface CommitWindow {
  ranges: Range[]
  wait: { promise: Promise<void>; settle: (outcome?: Promise<void>) => void } | undefined
}

export class Learners {
  readonly #joining = new Set<Replica>()
  /** Learners and committing ones: they get every write. Replaced, never changed in place. */
  #learners: readonly Replica[] = []
  readonly #committing = new Map<Replica, CommitWindow>()
  #committingList: readonly Replica[] = []
  readonly #errors = new Map<Replica, unknown>()

  /** Learners and committing members: they get every write besides the in-sync ones. */
  get learners(): readonly Replica[] {
    return this.#learners
  }

  /** Learners whose commit is under way: they get every flush besides the in-sync ones. */
  get committing(): readonly Replica[] {
    return this.#committingList
  }

  /** Nodes being resynced (joining, learner or committing). */
  get resyncing(): string[] {
    return [...this.#joining, ...this.#learners].map((r) => r.nodeId)
  }

  stateOf(nodeId: string): 'joining' | 'learner' | 'committing' | undefined {
    for (const r of this.#learners) if (r.nodeId === nodeId) return this.#committing.has(r) ? 'committing' : 'learner'
    for (const r of this.#joining) if (r.nodeId === nodeId) return 'joining'
    return undefined
  }

  join(learner: Replica): void {
    this.#joining.add(learner)
  }

  learn(learner: Replica): void {
    this.#joining.delete(learner)
    this.#learners = [...this.#learners, learner]
  }

  /** The first failure of a member being resynced, if it had one. */
  errorOf(learner: Replica): unknown {
    return this.#errors.get(learner)
  }

  /**
   * A request failed on `replica` with `error`. One being resynced has the failure
   * remembered: a committing one returns what the request waits on (the commit's outcome),
   * the others true. False: it is not being resynced.
   */
  failed(replica: Replica, error: unknown, range: Range | undefined): Promise<void> | boolean {
    const window = this.#committing.get(replica)
    if (window) return this.#failedInWindow(replica, error, window, range)
    if (!this.#learners.includes(replica) && !this.#joining.has(replica)) return false
    this.#remember(replica, error)
    return true
  }

  /** learner -> committing: its window opens. */
  commit(learner: Replica): CommitWindow {
    const window: CommitWindow = { ranges: [], wait: undefined }
    this.#committing.set(learner, window)
    this.#committingList = [...this.#committing.keys()]
    return window
  }

  /** The commit ended, either way. */
  committed(learner: Replica): void {
    this.#committing.delete(learner)
    this.#committingList = [...this.#committing.keys()]
  }

  /** It is in sync now: no longer a learner (its failure is kept until it leaves). */
  promoted(learner: Replica): void {
    this.#learners = this.#learners.filter((l) => l !== learner)
  }

  /** The resync is over: it is none of these any more. */
  leave(learner: Replica): void {
    this.#joining.delete(learner)
    this.committed(learner)
    this.#learners = this.#learners.filter((l) => l !== learner)
    this.#errors.delete(learner)
  }

  #remember(replica: Replica, error: unknown): void {
    if (!this.#errors.has(replica)) this.#errors.set(replica, error)
  }

  #failedInWindow(replica: Replica, error: unknown, window: CommitWindow, range: Range | undefined): Promise<void> {
    this.#remember(replica, error)
    if (range) window.ranges.push(range)
    if (!window.wait) {
      let settle!: (outcome?: Promise<void>) => void
      const promise = new Promise<void>((resolve) => { settle = resolve })
      promise.catch(noop)
      window.wait = { promise, settle }
    }
    return window.wait.promise
  }
}

function noop(): void {}
