/**
 * Where replicas live, as operators change it: `ha-update` (more or fewer copies of one
 * volume), `drain` (every replica off a node, none new on it), `remove` (forget a node that
 * holds nothing), and `rebalance` (one replica from the fullest node to the emptiest). A
 * move only changes the record: it adds the new replica and marks the old one retiring; the
 * volume's holder, or the healer for a volume nobody has attached (healer.ts), resyncs the
 * new one and then drops the old one, so a move is as safe as a resync, mounted or not.
 */
import type { Logger } from 'pino'
import type { Membership } from '../cluster/membership'
import { pxdError } from '../errors'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { KeyedMutex } from '../util/mutex'
import { formatSize } from '../util/size'
import { withReplacements } from './healing-plan'
import { MAX_REPL, parseVolumeRef } from './options'
import { allocatedBytes, type ReplicaPlacement } from './placement'
import type { VolumeInfo, VolumeRecord } from './types'

export interface RebalanceMove {
  volume: string
  from: string
  to: string
  size: number
}

export interface ReplicaMovesOptions {
  nodeId: string
  kvdb: Kvdb
  membership: Pick<Membership, 'nodes'>
  placement: Pick<ReplicaPlacement, 'replan' | 'create' | 'drop'>
  locks: KeyedMutex
  attachedOn: (name: string) => Promise<string | null>
  /** The record of a volume changed: a holder here looks for replicas to resync. */
  changed: (name: string) => void
  info: (record: VolumeRecord) => Promise<VolumeInfo>
  checkRunning: () => void
  log: Logger
}

export class ReplicaMoves {
  readonly #o: ReplicaMovesOptions

  constructor(o: ReplicaMovesOptions) {
    this.#o = o
  }

  /**
   * Change the replication of a live volume. Raising places new replicas (empty) that the
   * coordinator then resyncs and adds to the in-sync set; lowering drops replicas, the ones
   * out of sync first and never the coordinator's own while another will do.
   */
  async haUpdate(requestedName: string, repl: number): Promise<VolumeInfo> {
    const { name } = parseVolumeRef(requestedName)
    if (!Number.isInteger(repl) || repl < 1 || repl > MAX_REPL) throw pxdError('INVALID_ARGUMENT', `repl must be a whole number from 1 to ${MAX_REPL}`)
    return this.#o.locks.run(name, async () => {
      this.#o.checkRunning()
      const entry = await this.#requireRecord(name)
      const record = entry.value
      if (record.snapshotOf) throw pxdError('READ_ONLY', `${name} is a snapshot: its replication is its volume's`)
      if (repl === record.replicas.length && repl === record.spec.repl) return this.#o.info(record)
      if ((record.retiring ?? []).length > 0) throw pxdError('CONFLICT', `volume ${name} is moving replicas (${record.retiring!.join(', ')} on the way out); retry once that is done`)
      const { next, added, removed } = await this.#o.placement.replan(record, repl, await this.#o.attachedOn(name))
      await this.#refuseLosingSnapshots(`lowering the replication of ${name}`, (r) => r.snapshotOf?.id === record.id && r.replicas.some((p) => removed.includes(p.nodeId)))
      if (added.length > 0) next.degradedSince ??= new Date().toISOString()
      const ok = await this.#o.kvdb.txn({ compares: [{ key: entry.key, modRevision: entry.modRevision }], puts: [{ key: entry.key, value: next }] })
      if (!ok) throw pxdError('CONFLICT', `volume ${name} changed during ha-update; retry`)
      const failed = await this.#o.placement.create(added, next)
      if (failed.length > 0) this.#o.log.warn({ volume: name, volumeId: record.id, failed }, 'some new replicas could not be created yet; they stay out of sync')
      if (removed.length > 0) await this.#o.placement.drop({ ...record, replicas: removed.map((nodeId) => ({ nodeId })) })
      this.#o.log.info({ volume: name, volumeId: record.id, repl, added, removed }, 'replication changed')
      this.#o.changed(name)
      return this.#o.info(next)
    })
  }

  /** Mark a node drained (or, with `cancel`, not any more); returns the volumes that still have a replica on it. */
  async drain(nodeId: string, cancel = false): Promise<{ node: string; draining: boolean; volumes: string[] }> {
    this.#o.checkRunning()
    await this.#requireNode(nodeId)
    if (cancel) {
      await this.#o.kvdb.delete(keys.draining(nodeId))
      this.#o.log.info({ node: nodeId }, 'drain cancelled: the node takes new replicas again')
    } else if (!(await this.#o.kvdb.get(keys.draining(nodeId)))) {
      await this.#refuseLosingSnapshots(`draining ${nodeId}`, (r) => r.snapshotOf !== undefined && r.replicas.some((p) => p.nodeId === nodeId))
      await this.#o.kvdb.put(keys.draining(nodeId), { since: new Date().toISOString() })
      this.#o.log.info({ node: nodeId }, 'node draining: no new replicas go there, and each one it holds is replaced')
    }
    return { node: nodeId, draining: !cancel, volumes: await this.volumesOn(nodeId) }
  }

  /** Forget a node: refused while it is online or holds a replica. */
  async removeNode(nodeId: string): Promise<void> {
    this.#o.checkRunning()
    const node = await this.#requireNode(nodeId)
    const held = await this.volumesOn(nodeId)
    if (held.length > 0) throw pxdError('IN_USE', `node ${nodeId} still holds replicas of ${held.join(', ')}; drain it first (pxctl cluster drain ${nodeId})`)
    if (node.online) throw pxdError('IN_USE', `node ${nodeId} is online; stop pxd on it first`)
    await this.#o.kvdb.txn({ deletes: [keys.member(nodeId), keys.draining(nodeId), keys.offlineSince(nodeId)] })
    this.#o.log.info({ node: nodeId }, 'node removed from the cluster')
  }

  /** The volumes that have a replica on `nodeId`. */
  async volumesOn(nodeId: string): Promise<string[]> {
    return (await this.#o.kvdb.list<VolumeRecord>(keys.volumes())).filter((e) => !e.value.snapshotOf && e.value.replicas.some((r) => r.nodeId === nodeId)).map((e) => e.value.name)
  }

  /**
   * Start the one move that best evens out the bytes placed on the online nodes that are not
   * draining: the largest replica on the fullest node that makes it and the emptiest closer.
   * Nothing starts while another volume is still moving (`busy` names it); `move` is null
   * once no move helps.
   */
  async rebalance(): Promise<{ move: RebalanceMove | null; busy?: string }> {
    this.#o.checkRunning()
    const [nodes, entries, drains] = await Promise.all([this.#o.membership.nodes(), this.#o.kvdb.list<VolumeRecord>(keys.volumes()), this.#o.kvdb.list(keys.drainings())])
    const busy = entries.find((e) => !e.value.snapshotOf && ((e.value.retiring ?? []).length > 0 || e.value.inSync.length < e.value.replicas.length))
    if (busy) return { move: null, busy: busy.value.name }
    const draining = new Set(drains.map((d) => d.key.slice(keys.drainings().length)))
    const usable = nodes.filter((n) => n.online && n.capacity && !draining.has(n.nodeId))
    const allocated = allocatedBytes(entries.map((e) => e.value))
    const bytes = (n: string) => allocated.get(n) ?? 0
    const ordered = [...usable].sort((a, b) => bytes(b.nodeId) - bytes(a.nodeId))
    const fullest = ordered[0]
    const emptiest = ordered[ordered.length - 1]
    if (!fullest || !emptiest || fullest === emptiest) return { move: null }
    const gap = bytes(fullest.nodeId) - bytes(emptiest.nodeId)
    // A replica moved carries the volume, not its snapshots: volumes with snapshots stay put.
    const snapshotted = new Set(entries.flatMap((e) => (e.value.snapshotOf ? [e.value.snapshotOf.id] : [])))
    const candidates = entries.map((e) => e.value)
      .filter((v) => !v.snapshotOf && !snapshotted.has(v.id))
      .filter((v) => v.replicas.some((r) => r.nodeId === fullest.nodeId) && !v.replicas.some((r) => r.nodeId === emptiest.nodeId))
      .filter((v) => v.spec.size < gap && v.spec.size <= emptiest.capacity!.free)
      .sort((a, b) => b.spec.size - a.spec.size)
    const pick = candidates[0]
    if (!pick) return { move: null }
    const move: RebalanceMove = { volume: pick.name, from: fullest.nodeId, to: emptiest.nodeId, size: pick.spec.size }
    await this.#o.locks.run(pick.name, async () => {
      const entry = await this.#requireRecord(pick.name)
      if (entry.modRevision !== entries.find((e) => e.value.name === pick.name)!.modRevision) throw pxdError('CONFLICT', `volume ${pick.name} changed during rebalance; retry`)
      const next = withReplacements(entry.value, [move.to], [move.from], Date.now())
      const ok = await this.#o.kvdb.txn({ compares: [{ key: entry.key, modRevision: entry.modRevision }], puts: [{ key: entry.key, value: next }] })
      if (!ok) throw pxdError('CONFLICT', `volume ${pick.name} changed during rebalance; retry`)
      const failed = await this.#o.placement.create([move.to], next)
      if (failed.length > 0) this.#o.log.warn({ volume: pick.name, failed }, 'the new replica could not be created yet; it is retried by its resync')
      this.#o.changed(pick.name)
    })
    this.#o.log.info({ ...move, sizeText: formatSize(move.size) }, 'rebalance: moving a replica from the fullest node to the emptiest')
    return { move }
  }

  /**
   * A replica dropped from a node takes the snapshot layers it holds with it (a new replica
   * elsewhere gets the volume's contents only): refused while snapshots have a copy there.
   */
  async #refuseLosingSnapshots(what: string, losesCopy: (r: VolumeRecord) => boolean): Promise<void> {
    const hit = (await this.#o.kvdb.list<VolumeRecord>(keys.volumes())).map((e) => e.value).filter(losesCopy)
    if (hit.length === 0) return
    const names = hit.map((r) => `${r.name} (of ${r.snapshotOf!.name})`).join(', ')
    throw pxdError('IN_USE', `${what} would drop copies of snapshots ${names}: a moved replica carries its volume, not its snapshots; delete them first`)
  }

  async #requireRecord(name: string) {
    const entry = await this.#o.kvdb.get<VolumeRecord>(keys.volume(name))
    if (!entry) throw pxdError('NOT_FOUND', `volume ${name} not found`)
    return entry
  }

  async #requireNode(nodeId: string) {
    const node = (await this.#o.membership.nodes()).find((n) => n.nodeId === nodeId)
    if (!node) throw pxdError('NOT_FOUND', `node ${nodeId} is not in this cluster`)
    return node
  }
}
