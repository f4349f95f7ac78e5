/**
 * Cluster membership over the kvdb. Each node keeps two records:
 *   members/<id>  durable: its peer address and API URL, so it is known while offline
 *   alive/<id>    under a lease of --node-ttl seconds, with its capacity and the host bytes
 *                 its replicas take: a node whose lease expired (crashed, cut off) is offline
 * No gossip and no consensus of our own: liveness is etcd's lease expiry.
 */
import type { Logger } from 'pino'
import { keys, type Kvdb, type LeasedKey } from '../kvdb/kvdb'

export const CAPACITY_REFRESH_MS = 5_000

export interface MemberRecord {
  nodeId: string
  peerAddress: string | null
  apiUrl: string
  version: string
  joinedAt: string
}

export interface AliveRecord {
  capacity: { total: number; free: number }
  /** Host bytes each of its replicas takes, by volume id, as of updatedAt (absent from older nodes). */
  allocated?: Record<string, number>
  startedAt: string
  updatedAt: string
}

export interface NodeInfo extends MemberRecord {
  online: boolean
  capacity: { total: number; free: number } | null
  /** Host bytes each of its replicas takes, by volume id; null while offline or not reported. */
  allocated: Record<string, number> | null
}

export interface MembershipOptions {
  kvdb: Kvdb
  self: Omit<MemberRecord, 'joinedAt'>
  ttlSeconds: number
  capacity: () => Promise<{ total: number; free: number }>
  /** Host bytes each replica on this node takes, by volume id. */
  allocated?: () => Promise<Record<string, number>>
  log: Logger
}

export class Membership {
  readonly nodeId: string
  readonly #o: MembershipOptions
  readonly #startedAt = new Date().toISOString()
  #lease: LeasedKey | undefined
  #timer: NodeJS.Timeout | undefined

  constructor(options: MembershipOptions) {
    this.#o = options
    this.nodeId = options.self.nodeId
  }

  async start(): Promise<void> {
    const { kvdb, self } = this.#o
    const existing = await kvdb.get<MemberRecord>(keys.member(self.nodeId))
    await kvdb.put(keys.member(self.nodeId), { ...self, joinedAt: existing?.value.joinedAt ?? new Date().toISOString() } satisfies MemberRecord)
    this.#lease = await kvdb.putLeased(keys.alive(self.nodeId), await this.#aliveRecord(), this.#o.ttlSeconds)
    // Back: whoever saw this node go offline marked when; that no longer holds.
    await kvdb.delete(keys.offlineSince(self.nodeId))
    this.#lease.onChange((lost) => {
      if (lost) this.#o.log.error({ err: lost }, 'node lease lost: this node counts as offline until the metadata store is reachable again')
      else this.#o.log.info('node lease granted again: this node is online')
    })
    this.#timer = setInterval(() => void this.#refresh(), CAPACITY_REFRESH_MS)
    this.#timer.unref()
  }

  /** `keepLease`: a live restart, whose successor renews this node's records before the lease runs out; the node stays online. */
  async stop(options: { keepLease?: boolean } = {}): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    if (options.keepLease) this.#lease?.release()
    else await this.#lease?.revoke()
  }

  /** Every known node, with online = holding a live lease. */
  async nodes(): Promise<NodeInfo[]> {
    const [members, alive] = await Promise.all([
      this.#o.kvdb.list<MemberRecord>(keys.members()),
      this.#o.kvdb.list<AliveRecord>(keys.alives()),
    ])
    const aliveById = new Map(alive.map((a) => [a.key.slice(keys.alives().length), a.value]))
    return members.map(({ value }) => {
      const a = aliveById.get(value.nodeId)
      return { ...value, online: a !== undefined, capacity: a?.capacity ?? null, allocated: a?.allocated ?? null }
    })
  }

  async isOnline(nodeId: string): Promise<boolean> {
    return (await this.#o.kvdb.get(keys.alive(nodeId))) !== undefined
  }

  async #aliveRecord(): Promise<AliveRecord> {
    const [capacity, allocated] = await Promise.all([this.#o.capacity(), this.#o.allocated?.()])
    return { capacity, ...(allocated ? { allocated } : {}), startedAt: this.#startedAt, updatedAt: new Date().toISOString() }
  }

  async #refresh(): Promise<void> {
    try {
      await this.#lease?.update(await this.#aliveRecord())
    } catch (err) {
      this.#o.log.warn({ err }, 'could not refresh this node\'s capacity in the metadata store')
    }
  }
}
