/**
 * The volumes attached on this node: each one's engine, mountpoint, mount IDs and epoch,
 * from claim to release. An attachment is either mounted (the file system is up at its
 * mountpoint) or held for healing only (mountpoint null: a background resync or replacement
 * runs on its engine, see healer.ts). A mount here adopts a held engine, so its resync goes
 * on; a mount elsewhere fences it, and the healer then closes it (`dropHealing`).
 * Every method that changes an attachment runs under the volume's lock (the caller's, for
 * attach, adopt and detach; its own for the healing ones).
 */
import type { Logger } from 'pino'
import { VolumeCipher } from '../engine/cipher'
import { unwrapVolumeKey, type KeyOptions, type KeySources } from './keys'
import type { EngineEvents, VolumeEngine } from '../engine/volume-engine'
import { isPxdError, pxdError, type PxdError } from '../errors'
import type { Frontend } from '../frontend/frontend'
import { withoutDiscard } from '../frontend/device-directory'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { ReplicaDirectory } from '../replicas/directory'
import type { KeyedMutex } from '../util/mutex'
import type { Attachments } from './attachments'
import { releaseOptions, VolumeEngines } from './engines'
import { CAS_RETRIES, type InSyncSet } from './in-sync'
import { discards } from './options'
import type { VolumeRecord } from './types'
import type { LiveVolume } from '../restart/session-file'

export interface LocalAttachment {
  engine: VolumeEngine
  /** null: held for healing only, nothing mounted. */
  mountpoint: string | null
  mountIds: Set<string>
  epoch: number
  volumeId: string
  size: number
  /** The passphrase it was opened with, if any: a live restart hands it to the successor (src/restart/handed-keys.ts). */
  passphrase?: string
}

export interface LocalVolumesOptions {
  nodeId: string
  dataDir: string
  kvdb: Kvdb
  frontend: Frontend
  replicas: Pick<ReplicaDirectory, 'replica'>
  attachments: Attachments
  inSync: InSyncSet
  locks: KeyedMutex
  engineEvents: ((volumeName: string) => EngineEvents) | undefined
  log: Logger
  /** A volume was attached here (look for replicas to resync). */
  attached: (name: string) => void
  resyncRunning: (name: string) => boolean
  /** Another node took the volume: the share layer stops at once, then tears down under the lock. */
  fence: (name: string) => void
  fenced: (name: string) => Promise<void>
  stopping: () => boolean
  /** Where secure volumes' key-encryption keys come from on this node. */
  keySources?: KeySources
}

/** A secure volume opened with a passphrase keeps it (for a live restart); any other keeps nothing. */
function passphraseOf(cipher: VolumeCipher | undefined, keyOptions: KeyOptions): { passphrase?: string } {
  return cipher && keyOptions.passphrase !== undefined ? { passphrase: keyOptions.passphrase } : {}
}

export class LocalVolumes {
  readonly #o: LocalVolumesOptions
  /** By volume name; read by resyncs, scrubs and the info view. */
  readonly map = new Map<string, LocalAttachment>()
  readonly engines: VolumeEngines

  constructor(o: LocalVolumesOptions) {
    this.#o = o
    this.engines = new VolumeEngines({
      nodeId: o.nodeId, dataDir: o.dataDir, replicas: o.replicas, attachments: o.attachments, inSync: o.inSync,
      readRecord: async (name) => (await this.#record(name)).value,
      engineEvents: o.engineEvents, onFenced: (name, engine, err, log) => this.#fenced(name, engine, err, log), log: o.log,
    })
  }

  /** The cipher of a secure volume (undefined for a plain one); KEY_REQUIRED or BAD_KEY when its key cannot be opened. */
  async #cipherOf(name: string, keyOptions: KeyOptions): Promise<VolumeCipher | undefined> {
    return this.#cipherFor((await this.#record(name)).value, keyOptions)
  }

  #cipherFor(record: VolumeRecord, keyOptions: KeyOptions): VolumeCipher | undefined {
    const key = this.#unwrap(record, keyOptions)
    if (!key) return undefined
    try {
      return new VolumeCipher(key)
    } finally {
      key.fill(0)
    }
  }

  /** A secure volume's data key (the caller zeroes it); undefined for a plain one; KEY_REQUIRED or BAD_KEY. */
  #unwrap(record: VolumeRecord, keyOptions: KeyOptions): Buffer | undefined {
    return record.encryption ? unwrapVolumeKey(record.id, record.encryption, keyOptions, this.#o.keySources ?? {}, record.name) : undefined
  }

  /** KEY_REQUIRED or BAD_KEY unless `keyOptions` open the volume's key; nothing for a plain volume. */
  async checkKey(name: string, keyOptions: KeyOptions): Promise<void> {
    this.#unwrap((await this.#record(name)).value, keyOptions)?.fill(0)
  }

  /** The volumes held here for healing only. */
  healing(): string[] {
    return [...this.map].filter(([, l]) => l.mountpoint === null).map(([name]) => name)
  }

  /**
   * Claim, open the replicas, build the chain; the attachment starts with no mount IDs.
   * `at`: where the file system goes, when not at the volume's mountpoint.
   */
  async attachHere(name: string, at?: string, keyOptions: KeyOptions = {}): Promise<{ mountpoint: string; volumeId: string; epoch: number }> {
    // The key is opened before the claim: a missing or wrong key leaves no epoch bump behind.
    const cipher = await this.#cipherOf(name, keyOptions)
    const { engine, epoch, record } = await this.engines.attach(name)
    if (cipher) engine.useCipher(cipher)
    try {
      const mountpoint = await this.#mountFs(name, record, engine, at)
      this.map.set(name, { engine, mountpoint, mountIds: new Set(), epoch, volumeId: record.id, size: record.spec.size, ...passphraseOf(cipher, keyOptions) })
      this.#o.attached(name)
      return { mountpoint, volumeId: record.id, epoch }
    } catch (err) {
      await this.engines.detach(name, record.id, engine, epoch)
      throw err
    }
  }

  /**
   * Mount a volume held here for healing on the engine it has; its resync goes on. False
   * when another node took it meanwhile (the engine is let go; attach as usual).
   */
  async adopt(name: string, local: LocalAttachment, keyOptions: KeyOptions = {}): Promise<boolean> {
    // A missing or wrong key fails the mount and leaves the healing engine as it is.
    const cipher = await this.#cipherOf(name, keyOptions)
    try {
      const record = (await this.#record(name)).value
      if (cipher) local.engine.useCipher(cipher)
      Object.assign(local, passphraseOf(cipher, keyOptions))
      await this.#o.attachments.markMounted(name, local.epoch)
      local.mountpoint = await this.#mountFs(name, record, local.engine)
      this.#o.log.info({ volume: name, volumeId: record.id, epoch: local.epoch }, 'mounted on the engine that was healing it; its resync goes on')
      return true
    } catch (err) {
      this.map.delete(name)
      await local.engine.close().catch(() => undefined)
      await this.#o.attachments.release(name, local.epoch).catch(() => undefined)
      if (!isPxdError(err, 'FENCED')) throw err
      return false
    }
  }

  /** Open the volume's engine here for one call, no mount, and let it go after (the caller holds the volume's lock). */
  async withEngine<T>(name: string, work: (engine: VolumeEngine) => Promise<T>): Promise<T> {
    const { engine, epoch, record } = await this.engines.attach(name)
    try {
      return await work(engine)
    } finally {
      await this.engines.detach(name, record.id, engine, epoch)
    }
  }

  /** Take a volume nobody holds, for healing only (no mount); false when it could not be. */
  async attachForHealing(name: string, refuse: () => boolean): Promise<boolean> {
    return this.#o.locks.run(name, async () => {
      if (this.#o.stopping() || this.map.has(name) || refuse()) return false
      let attached
      try {
        attached = await this.engines.attach(name, 'resync')
      } catch (err) {
        this.#o.log.debug({ err, volume: name }, 'could not take the volume for healing')
        return false
      }
      const { engine, epoch, record } = attached
      this.map.set(name, { engine, mountpoint: null, mountIds: new Set(), epoch, volumeId: record.id, size: record.spec.size })
      this.#o.log.info({ volume: name, volumeId: record.id, epoch }, 'volume taken for healing (no mount; any mount takes it over)')
      return true
    })
  }

  /** Close the engine of a volume held for healing at `epoch` that is no longer ours (no release: it is not). */
  async dropHealing(name: string, epoch: number): Promise<void> {
    await this.#o.locks.run(name, async () => {
      const local = this.map.get(name)
      if (!local || local.mountpoint !== null || local.epoch !== epoch) return
      this.map.delete(name)
      await local.engine.close().catch(() => undefined)
      this.#o.log.info({ volume: name, volumeId: local.volumeId, epoch }, 'healing handed over: another node holds the volume now')
    })
  }

  /** Let go of a volume held for healing, unless it was mounted meanwhile or still resyncs. */
  async releaseHealing(name: string): Promise<void> {
    await this.#o.locks.run(name, async () => {
      const local = this.map.get(name)
      if (!local || local.mountpoint !== null || this.#o.resyncRunning(name)) return
      await this.detach(name, local, false)
      this.#o.log.info({ volume: name, volumeId: local.volumeId }, 'healing done: volume let go')
    })
  }

  /**
   * A live restart: take over a volume the process before left mounted, at the epoch it
   * held, when this node still holds it then (nobody took it meanwhile); its mount and loop
   * stay. A secure volume needs a key this node can open again (cluster secret, a named
   * secret): a passphrase was never kept. `clean`: the predecessor answered everything.
   */
  async resume(v: LiveVolume, clean: boolean, keyOptions: KeyOptions = {}): Promise<void> {
    const attachment = (await this.#o.attachments.get(v.name))?.value
    if (!attachment || attachment.nodeId !== this.#o.nodeId || attachment.epoch !== v.epoch || attachment.purpose) {
      throw pxdError('FENCED', `volume ${v.name} is no longer held here at epoch ${v.epoch}`)
    }
    const record = (await this.#record(v.name)).value
    if (record.id !== v.volumeId) throw pxdError('FENCED', `volume ${v.name} is another volume now (${record.id})`)
    const cipher = this.#cipherFor(record, keyOptions)
    const engine = await this.engines.resume(v.name, record, v.epoch, clean)
    if (cipher) engine.useCipher(cipher)
    this.#o.frontend.resume(v, discards(record.spec) ? engine : withoutDiscard(engine))
    this.map.set(v.name, { engine, mountpoint: v.mountpoint, mountIds: new Set(v.mountIds), epoch: v.epoch, volumeId: record.id, size: record.spec.size, ...passphraseOf(cipher, keyOptions) })
    this.#o.attached(v.name)
  }

  /** resume() for each volume handed over, under its lock; those that failed have their attachment given back and are returned. */
  async resumeAll(volumes: LiveVolume[], clean: boolean, keys: Record<string, KeyOptions> = {}): Promise<LiveVolume[]> {
    const failed: LiveVolume[] = []
    for (const v of volumes) {
      await this.#o.locks.run(v.name, () => this.resume(v, clean && !v.reconcile, keys[v.name])).catch(async (err) => {
        this.#o.log.error({ err, volume: v.name, volumeId: v.volumeId }, 'could not take over a volume the previous pxd left mounted')
        failed.push(v)
        await this.#o.attachments.release(v.name, v.epoch, clean ? undefined : { unclean: true }).catch(() => undefined)
      })
    }
    return failed
  }

  /** The passphrases of mounted secure volumes, by name: what a successor could not open itself. */
  liveKeys(): Record<string, KeyOptions> {
    return Object.fromEntries([...this.map].filter(([, l]) => l.mountpoint !== null && l.passphrase !== undefined).map(([name, l]) => [name, { passphrase: l.passphrase! }]))
  }

  /** What a successor needs of each mounted volume: its epoch and mount IDs (the frontend knows its loop and mount). */
  live(): Array<Omit<LiveVolume, 'loop' | 'mountpoint'>> {
    return [...this.map].filter(([, l]) => l.mountpoint !== null).map(([name, l]) => ({ name, volumeId: l.volumeId, epoch: l.epoch, mountIds: [...l.mountIds] }))
  }

  /**
   * The end of a handoff, once no request is in flight: every mounted volume's engine
   * closes (its replicas flushed) and its attachment stays, for the successor to resume.
   */
  async closeForHandoff(): Promise<Array<Omit<LiveVolume, 'loop' | 'mountpoint'>>> {
    const out: Array<Omit<LiveVolume, 'loop' | 'mountpoint'>> = []
    for (const [name, local] of [...this.map]) {
      if (local.mountpoint === null) continue
      this.map.delete(name)
      await local.engine.close().catch((err) => this.#o.log.error({ err, volume: name }, 'closing the volume engine failed; the successor opens it again'))
      out.push({ name, volumeId: local.volumeId, epoch: local.epoch, mountIds: [...local.mountIds], ...(local.engine.diverged ? { reconcile: true } : {}) })
    }
    return out
  }

  /** Unmount (when mounted), close the engine and give the attachment back. */
  async detach(name: string, local: LocalAttachment, lazy: boolean): Promise<void> {
    if (local.mountpoint !== null) await this.#o.frontend.detach(name, lazy)
    this.map.delete(name)
    try {
      await local.engine.close()
    } finally {
      const opts = releaseOptions(local.engine)
      await this.#o.attachments.release(name, local.epoch, opts).catch((err) => {
        // The volume is unmounted here whatever the kvdb says; record that once it is back.
        this.#o.log.warn({ err, volume: name, volumeId: local.volumeId }, 'could not record the detach now; retrying in the background')
        this.#o.attachments.retryRelease(name, local.epoch, opts)
      })
    }
  }

  /**
   * A volume attached here grew (its record has the new size): the engine opens its replicas
   * again at that size, then a mounted one's device file, loop device and file system follow.
   * Nothing attached here: nothing to do (its replicas grow at their next open).
   */
  async grow(name: string, record: VolumeRecord): Promise<void> {
    const local = this.map.get(name)
    if (!local || local.size >= record.spec.size) return
    await local.engine.grow(record.spec.size)
    local.size = record.spec.size
    if (local.mountpoint !== null) await this.#o.frontend.grew(name, record.spec.fs)
  }

  #mountFs(name: string, record: VolumeRecord, engine: VolumeEngine, at?: string): Promise<string> {
    return this.#o.frontend.attach({
      id: record.id, name, fs: record.spec.fs, blockSize: record.spec.blockSize, device: discards(record.spec) ? engine : withoutDiscard(engine),
      formatted: record.formatted === true,
      onFormatted: () => this.#markFormatted(name),
      readOnly: record.snapshotOf !== undefined,
      ...(at ? { mountpoint: at } : {}),
    })
  }

  async #markFormatted(name: string): Promise<void> {
    for (let attempt = 0; attempt < CAS_RETRIES; attempt++) {
      const vol = await this.#record(name)
      if (vol.value.formatted) return
      const ok = await this.#o.kvdb.txn({ compares: [{ key: vol.key, modRevision: vol.modRevision }], puts: [{ key: vol.key, value: { ...vol.value, formatted: true } satisfies VolumeRecord }] })
      if (ok) return
    }
    throw pxdError('CONFLICT', `volume ${name}: could not record that it was formatted`)
  }

  /** Another node attached the volume: tear down the local chain, and leave the attachment to its new holder. */
  #fenced(name: string, engine: VolumeEngine, err: PxdError, log: Logger): void {
    if (this.map.get(name)?.mountpoint === null) log.info('a mount on another node took over the volume this node was healing; the resync continues there')
    else log.error({ err }, 'fenced: another node attached this volume with a newer epoch; tearing down the local mount')
    this.#o.fence(name)
    void this.#o.locks.run(name, async () => {
      const local = this.map.get(name)
      if (!local || local.engine !== engine) return
      this.map.delete(name)
      await this.#o.fenced(name)
      if (local.mountpoint !== null) await this.#o.frontend.detach(name, true).catch((e) => log.error({ err: e }, 'teardown of a fenced volume failed'))
      await engine.close().catch(() => undefined)
    })
  }

  async #record(name: string) {
    const entry = await this.#o.kvdb.get<VolumeRecord>(keys.volume(name))
    if (!entry) throw pxdError('NOT_FOUND', `volume ${name} not found`)
    return entry
  }
}
