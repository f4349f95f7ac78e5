/**
 * The volume manager's side of a live restart (src/restart/). The process going hands its
 * volumes over: shared ones first (share-restart.ts), then background work ends, what only
 * healing held (and shared volumes that could not be handed over) is let go as at a stop,
 * and every other mounted volume's engine closes with its attachment kept. The successor
 * resumes them before start (local-volumes.ts), then the shares. liveVolumes and liveKeys
 * are what a successor would need after a crash (the session file follows every mount).
 *
 * The detach at shutdown is here too: a plain stop lets every volume go the same way.
 */
import type { Logger } from 'pino'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { KeyedMutex } from '../util/mutex'
import type { LiveVolume } from '../restart/session-file'
import type { SharedVolumes } from '../shares/shared-volumes'
import type { LiveShare } from '../shares/share-handoff'
import type { HandedShare } from '../shares/share-restart'
import type { KeyOptions } from './keys'
import type { LocalAttachment, LocalVolumes } from './local-volumes'
import type { VolumeRecord } from './types'

/** How long a live restart waits for a shared volume's client mount to answer what it read and commit its writes. */
const SHARE_HANDOFF_MS = 20_000

/** What a successor is handed of each volume mounted here (the frontend adds its loop and mountpoint). */
export type HandedVolume = Omit<LiveVolume, 'loop' | 'mountpoint'>

export interface LiveRestartOptions {
  kvdb: Kvdb
  locks: KeyedMutex
  local: Pick<LocalVolumes, 'map' | 'detach' | 'closeForHandoff' | 'live' | 'liveKeys'>
  shares: Pick<SharedVolumes, 'has' | 'mounted' | 'handOff' | 'resumeAll' | 'liveKeys'>
  /** Ends the manager's background work; requests are refused from then on. */
  stopBackground: () => Promise<void>
  log: Logger
}

export class LiveRestart {
  readonly #o: LiveRestartOptions

  constructor(o: LiveRestartOptions) {
    this.#o = o
  }

  /** Stop for a live restart; `drain` waits until no request is in flight. */
  async handOff(drain: () => Promise<void>): Promise<{ volumes: HandedVolume[]; shares: HandedShare[] }> {
    const { local, shares: sv } = this.#o
    const shares = await sv.handOff(SHARE_HANDOFF_MS)
    const shared = new Set([...local.map.keys()].filter((name) => sv.has(name)))
    await this.#o.stopBackground()
    await this.detachAll((name, l) => l.mountpoint === null || shared.has(name))
    await drain()
    return { volumes: await local.closeForHandoff(), shares }
  }

  /**
   * Before start: the shared volumes handed over. After a crash none was written: a shared
   * volume `resumed` here is served again all the same (its client mount, if it had one,
   * died with the process).
   */
  async resumeShares(shares: readonly LiveShare[], fds: Map<string, number>, handedKeys: Record<string, KeyOptions>, resumed: readonly LiveVolume[]): Promise<void> {
    const shared: LiveVolume[] = []
    for (const v of resumed) if ((await this.#o.kvdb.get<VolumeRecord>(keys.volume(v.name)))?.value.spec.shared) shared.push(v)
    return this.#o.shares.resumeAll(shares, fds, handedKeys, shared)
  }

  /** What a successor needs of each attached volume (local-volumes.ts). */
  liveVolumes(): HandedVolume[] {
    // A shared volume's mount IDs are its share's: a successor after a crash serves it with them.
    return this.#o.local.live().map((v) => {
      const shared = this.#o.shares.mounted(v.name)
      return shared ? { ...v, mountIds: [...shared.mountIds] } : v
    })
  }

  /** The passphrases of mounted volumes, for a successor only (never written to a disk). */
  liveKeys(): Record<string, KeyOptions> {
    return { ...this.#o.shares.liveKeys(), ...this.#o.local.liveKeys() }
  }

  /** Detach the volumes `which` picks, each under its lock, at shutdown (a failure is logged, the rest go on). */
  async detachAll(which: (name: string, local: LocalAttachment) => boolean): Promise<void> {
    for (const [name, local] of [...this.#o.local.map]) {
      if (!which(name, local)) continue
      await this.#o.locks.run(name, () => this.#o.local.detach(name, local, true)).catch((err) => this.#o.log.error({ err, volume: name, volumeId: local.volumeId }, 'detach at shutdown failed'))
    }
  }
}
