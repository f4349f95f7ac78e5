/** `pxctl volume snapshot create|list|delete`, `pxctl volume restore` and `pxctl volume clone`: Portworx's command shapes. */
import type { ApiClient } from '../api/client'
import { formatSize } from '../util/size'
import { renderTable } from './table'

export interface SnapshotFlags {
  name?: string | undefined
  snapshot?: string | undefined
  noFreeze: boolean
}

type Out = (data: unknown, human: () => string) => void
type Usage = (message: string) => Error

/** `args`: what follows `pxctl volume snapshot`. */
export async function snapshotCommand(client: ApiClient, args: string[], flags: SnapshotFlags, out: Out, usage: Usage): Promise<number> {
  const [sub, target, ...extra] = args
  if (extra.length > 0) throw usage(`unexpected arguments: ${extra.join(' ')}`)
  switch (sub) {
    case 'create': {
      if (!target) throw usage('pxctl volume snapshot create needs the VOLUME to snapshot: pxctl volume snapshot create --name SNAP VOLUME')
      if (!flags.name) throw usage('pxctl volume snapshot create needs --name SNAP')
      const s = await client.createSnapshot(target, flags.name, !flags.noFreeze)
      out(s, () => `Snapshot ${s.name} of ${target} created (id ${s.id}, ${formatSize(s.size)}, on ${s.replicas.map((r) => r.nodeId).join(', ')})\n`)
      return 0
    }
    case 'list':
    case 'ls': {
      const snaps = await client.listSnapshots(target)
      out(snaps, () => snaps.length === 0 ? `No snapshots${target ? ` of ${target}` : ''}\n`
        : renderTable(['NAME', 'ID', 'VOLUME', 'SIZE', 'CREATED', 'REPLICAS', 'STATE'],
          snaps.map((s) => [s.name, s.id, s.parent ?? '-', formatSize(s.size), s.createdAt, s.replicas.map((r) => r.nodeId).join(','), s.state])))
      return 0
    }
    case 'delete':
    case 'rm': {
      if (!target) throw usage('pxctl volume snapshot delete needs the SNAPSHOT to delete')
      await client.deleteSnapshot(target)
      out({ removed: target }, () => `Snapshot ${target} deleted\n`)
      return 0
    }
    default:
      throw usage(sub ? `unknown snapshot command "${sub}"` : 'pxctl volume snapshot needs a command: create, list, delete')
  }
}

/** `pxctl volume clone --name NEW SOURCE` (a volume or a snapshot). */
export async function cloneCommand(client: ApiClient, source: string | undefined, flags: SnapshotFlags, out: Out, usage: Usage): Promise<number> {
  if (!source) throw usage('pxctl volume clone needs the SOURCE (a volume or a snapshot): pxctl volume clone --name NEW SOURCE')
  if (!flags.name) throw usage('pxctl volume clone needs --name NEW')
  const v = await client.clone(source, flags.name, !flags.noFreeze)
  out(v, () => `Volume ${v.name} cloned from ${source} (id ${v.id}, ${formatSize(v.size)}, on ${v.replicas.map((r) => r.nodeId).join(', ')})\n`)
  return 0
}

/** `pxctl volume restore --snapshot SNAP VOLUME`. */
export async function restoreCommand(client: ApiClient, volume: string | undefined, flags: SnapshotFlags, out: Out, usage: Usage): Promise<number> {
  if (!volume) throw usage('pxctl volume restore needs the VOLUME to restore: pxctl volume restore --snapshot SNAP VOLUME')
  if (!flags.snapshot) throw usage('pxctl volume restore needs --snapshot SNAP')
  const v = await client.restore(volume, flags.snapshot)
  out(v, () => `Volume ${v.name} restored from snapshot ${flags.snapshot}\n`)
  return 0
}
