/**
 * Who may create or drop a replica on a node.
 *
 * A peer link proves that its far end holds the cluster secret (TLS-PSK and the secret
 * handshake) and, with --peer-tls-* certificates, which node it is (the certificate's CN is
 * the node id the handshake names). The secret alone must not be enough to change where a
 * volume's copies are: a `drop` deletes a copy, and a `create` (or `clone`) makes an empty
 * one stand in where a copy went missing, which a later resync or failover could take for
 * the volume's data.
 *
 * The rule: node N serves a create, clone or drop of replica V (a volume's id, or a snapshot
 * layer's) from peer P only while the kvdb holds a grant at `grants/<V>/<N>` that names P
 * and that operation ('create' covers clone), younger than GRANT_MAX_AGE_MS. The node that
 * coordinates the change writes the grant (compare-and-swap, as every record change) after
 * the volume record says what is to happen and before it sends the request, and deletes it
 * once the request is answered. Every remote create, clone and drop goes through
 * ReplicaDirectory, which does this, so the grant names:
 *   - for a new volume or a clone: the node that wrote its record;
 *   - for ha-update, drain, rebalance: the node that changed the record;
 *   - for a replacement or a retirement: the volume's attachment holder at its epoch (the
 *     healer changes the record only under that attachment);
 *   - for a volume, clone or snapshot that is gone (removed, or a create that failed): the
 *     node that deleted its record, and no other; for a snapshot layer never recorded (a
 *     snapshot that failed, the layer a clone of a volume is made through): the node that
 *     took it.
 * The checks on the record stay as they were (a create needs it to list N, a drop needs it
 * not to). A drop that no grant covers is refused even when the kvdb has no record of V at
 * all: such a replica is the leftovers sweep's (leftovers.ts), which only ever quarantines
 * it at its own node's start, so nothing the kvdb does not order is deleted by a peer.
 *
 * Writing a grant needs write access to the kvdb, which the cluster secret does not give.
 * Under TLS-PSK any holder of the secret can name itself as any node in the handshake, so
 * there the rule leaves only the moments while a grant exists (one request long); with
 * certificates, a grant can be used only by the node it names.
 */
import { randomBytes } from 'node:crypto'
import { pxdError } from '../errors'
import { keys, type Kvdb } from '../kvdb/kvdb'

/**
 * A grant older than this is void (its writer died before deleting it). Its age is read
 * against the serving node's clock: nodes' clocks must agree within minutes, as the
 * healer's offline marks already assume.
 */
export const GRANT_MAX_AGE_MS = 10 * 60_000

export type GrantedOp = 'create' | 'drop'

export interface ReplicaGrant {
  /** The node that may do it. */
  by: string
  op: GrantedOp
  /** When it was written (ISO time, the writer's clock). */
  at: string
  /** Tells this grant from a newer one at the same key, so that only its writer deletes it. */
  token: string
}

/** Why `peer` may not do `op` on the replica given `grant` (the grant at its key, if any); undefined when it may. */
export function grantRefusal(grant: ReplicaGrant | undefined, peer: string, op: GrantedOp, now: number): string | undefined {
  if (!grant) return `the metadata store grants nobody a ${op} of this replica now`
  if (grant.by !== peer) return `the metadata store grants that ${grant.op} to node ${grant.by}, not to ${peer}`
  if (grant.op !== op) return `node ${peer} holds a grant to ${grant.op} this replica, not to ${op} it`
  const age = now - Date.parse(grant.at)
  if (!(age < GRANT_MAX_AGE_MS)) return `the grant to node ${peer} is ${Number.isNaN(age) ? 'unreadable' : `${Math.round(age / 1000)} s old`}, past its ${GRANT_MAX_AGE_MS / 1000} s`
  return undefined
}

/** Writes, reads and deletes the grants of one node (the writer's side and the serving side). */
export class ReplicaGrants {
  readonly #kvdb: Kvdb
  readonly #nodeId: string

  constructor(kvdb: Kvdb, nodeId: string) {
    this.#kvdb = kvdb
    this.#nodeId = nodeId
  }

  /** Run `work` (the request to `target`) under a grant to this node to `op` replica `volumeId` there. */
  async around<T>(volumeId: string, target: string, op: GrantedOp, work: () => Promise<T>): Promise<T> {
    const key = keys.replicaGrant(volumeId, target)
    const grant: ReplicaGrant = { by: this.#nodeId, op, at: new Date().toISOString(), token: randomBytes(8).toString('hex') }
    const current = await this.#kvdb.get<ReplicaGrant>(key)
    // A grant someone else holds is replaced: that node's request is then refused and retried as any failed one.
    const ok = await this.#kvdb.txn({ compares: [{ key, modRevision: current?.modRevision ?? 0 }], puts: [{ key, value: grant }] })
    if (!ok) throw pxdError('CONFLICT', `the grant to ${op} the replica of ${volumeId} on node ${target} changed meanwhile; retry`)
    try {
      return await work()
    } finally {
      await this.#revoke(key, grant.token).catch(() => undefined)
    }
  }

  /** The grant for the replica of `volumeId` on this node, as the kvdb has it now. */
  async here(volumeId: string): Promise<ReplicaGrant | undefined> {
    return (await this.#kvdb.get<ReplicaGrant>(keys.replicaGrant(volumeId, this.#nodeId)))?.value
  }

  /** At start: delete the grants this node wrote and did not get to delete (it stopped part way). */
  async forgetOwn(): Promise<number> {
    const own = (await this.#kvdb.list<ReplicaGrant>(keys.replicaGrants())).filter((e) => e.value.by === this.#nodeId)
    for (const e of own) await this.#kvdb.txn({ compares: [{ key: e.key, modRevision: e.modRevision }], deletes: [e.key] })
    return own.length
  }

  async #revoke(key: string, token: string): Promise<void> {
    const current = await this.#kvdb.get<ReplicaGrant>(key)
    if (current?.value.token !== token) return
    await this.#kvdb.txn({ compares: [{ key, modRevision: current.modRevision }], deletes: [key] })
  }
}
