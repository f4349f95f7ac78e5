/**
 * Serves the shared volumes attached on this node to the client nodes: the handler of
 * `fsop` and `fscancel` frames behind the peer server. The transport has authenticated the
 * peer; here the frame must name a volume this node serves (else NOT_SERVING, and the
 * client looks for the server again) and come from a node registered as its client.
 */
import type { FsCancelFrame, FsOpFrame } from '../replication/frames'
import { pxdError } from '../errors'
import type { ShareExport } from './share-export'
import type { ShareRegistry } from './share-registry'

const REFUSAL_MEMORY_MS = 1_000

export class ShareService {
  readonly #exports = new Map<string, ShareExport>()
  readonly #registry: ShareRegistry
  /** Clients seen registered, per volume id: checked against the kvdb on first sight. */
  readonly #known = new Map<string, Set<string>>()

  readonly #isMember: (nodeId: string) => Promise<boolean>
  /** Peers refused lately, so a stream of frames from one costs one kvdb read a second. */
  readonly #refused = new Map<string, number>()

  /** `isMember`: whether a node is a member of the cluster holding its lease now. */
  constructor(registry: ShareRegistry, isMember: (nodeId: string) => Promise<boolean>) {
    this.#registry = registry
    this.#isMember = isMember
  }

  add(exp: ShareExport): void {
    this.#exports.set(exp.volumeId, exp)
    this.#known.set(exp.volumeId, new Set())
  }

  remove(exp: ShareExport): void {
    if (this.#exports.get(exp.volumeId) === exp) {
      this.#exports.delete(exp.volumeId)
      this.#known.delete(exp.volumeId)
    }
  }

  /** The client's record is gone (unmounted, lease expired): it must register again. */
  forget(volumeId: string, client: string): void {
    this.#known.get(volumeId)?.delete(client)
  }

  byVolumeId(volumeId: string): ShareExport | undefined {
    return this.#exports.get(volumeId)
  }

  /** `protocol`: the peer link's (2 and later: the client takes its locks again when asked, SERVER_RESTARTED). */
  async handle(peer: string, req: FsOpFrame | FsCancelFrame, protocol = 1): Promise<Uint8Array | void> {
    const exp = this.#exports.get(req.vol)
    if (!exp || exp.closed) throw pxdError('NOT_SERVING', `node does not serve shared volume ${req.vol}`)
    await this.#requireClient(exp, peer)
    if (req.t === 'fscancel') return exp.cancel(peer, req.xid)
    return exp.exec(peer, req.xid, req.data, req.reclaim === true, protocol >= 2)
  }

  /** A client is a live member of the cluster with a record of its mount. */
  async #requireClient(exp: ShareExport, peer: string): Promise<void> {
    const known = this.#known.get(exp.volumeId)!
    if (known.has(peer)) return
    const refusedAt = this.#refused.get(`${exp.volumeId}/${peer}`)
    const refuse = () => pxdError('NOT_A_CLIENT', `node ${peer} has not mounted shared volume ${exp.name}`)
    if (refusedAt !== undefined && Date.now() - refusedAt < REFUSAL_MEMORY_MS) throw refuse()
    const [clients, member] = await Promise.all([this.#registry.clients(exp.name), this.#isMember(peer)])
    if (!member || !clients.some((c) => c.nodeId === peer)) {
      if (this.#refused.size > 10_000) this.#refused.clear()
      this.#refused.set(`${exp.volumeId}/${peer}`, Date.now())
      throw refuse()
    }
    this.#refused.delete(`${exp.volumeId}/${peer}`)
    known.add(peer)
  }
}
