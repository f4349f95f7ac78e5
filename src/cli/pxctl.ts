/** `pxctl`: the operator's CLI, a client of the daemon's HTTP API. */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { ApiClient } from '../api/client'
import type { StatusBody } from '../api/server'
import type { NodeInfo } from '../cluster/membership'
import { isPxdError, messageOf } from '../errors'
import { formatSize } from '../util/size'
import type { SharingInfo, VolumeInfo } from '../volumes/types'
import { drainCommand, rebalanceCommand } from './cluster-commands'
import { cloneCommand, restoreCommand, snapshotCommand } from './snapshot-commands'
import { formatDuration, formatPercent, plural, renderFields, renderTable } from './table'
import { packageVersion } from './version'

const HELP = `pxctl: manage a pxd node

Usage: pxctl [--api URL] [--json] COMMAND

Commands:
  status                              one-screen summary: readiness, node, cluster, peers,
                                      capacity, volumes
  cluster list                        every node: state, peer address, capacity
  cluster drain NODE [--no-wait] [--cancel]
                                      move every replica off NODE (mounted volumes too) and
                                      place no new one there; follows until it is empty
  cluster remove NODE                 forget an offline NODE that holds no replica
  node restart                        restart this node's pxd in place (a new version, if one
                                      was installed): every volume stays mounted, I/O pauses;
                                      under systemd use "systemctl restart pxd"
  cluster rebalance                   move replicas from the fullest nodes to the emptiest,
                                      one volume at a time, printing each move
  volume create NAME [--size 10G] [--repl 1] [--fs ext4] [--shared] [--opt KEY=VALUE ...]
                                      create a volume (NAME may be an inline spec: name=v,size=10G);
                                      --shared (or --sharedv4): mountable on every node at once
  volume list                         all volumes
  volume inspect NAME [--watch]       one volume in detail; --watch follows resync progress
  volume ha-update NAME --repl N      raise or lower the replication of a live volume
  volume update NAME --size N         grow a volume, mounted or not (its file system grows
                                      online where it is mounted); shrinking is refused
  volume scrub NAME                   verify every block of every replica, repair from a good one
  volume delete NAME                  remove a volume (it must not be mounted, nor have snapshots)
  volume snapshot create --name SNAP [--no-freeze] VOLUME
                                      a point-in-time, read-only snapshot (no data copied); a
                                      mounted file system is frozen for that instant
  volume snapshot list [VOLUME]       snapshots, of one volume or of all
  volume snapshot delete SNAP         delete a snapshot (its space goes back to the hosts)
  volume restore --snapshot SNAP VOLUME
                                      the volume's contents become the snapshot's (unmounted)
  volume clone --name NEW [--no-freeze] SOURCE
                                      a new writable volume that reads as SOURCE (a volume or
                                      a snapshot) and shares its unchanged blocks
  quarantine list                     replicas this node set aside at start because the
                                      metadata store did not list them (never deleted on its own)
  quarantine purge NAME               delete one of them for good

Global options:
  --api URL     the daemon's API (default http://127.0.0.1:9001, or PXD_API)
  --api-token-file FILE  the API token for changing calls (or PXD_API_TOKEN_FILE); without it,
                         root on the daemon's host reads the daemon's own token file
  --json        machine-readable JSON output (sizes in bytes), also for errors (on stderr)
  -h, --help    show this help
  -v, --version print the version
`

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      api: { type: 'string' },
      'api-token-file': { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'v' },
      size: { type: 'string' },
      repl: { type: 'string' },
      fs: { type: 'string' },
      shared: { type: 'boolean' },
      sharedv4: { type: 'boolean' },
      opt: { type: 'string', multiple: true },
      watch: { type: 'boolean' },
      'no-wait': { type: 'boolean' },
      cancel: { type: 'boolean' },
      name: { type: 'string' },
      snapshot: { type: 'string' },
      'no-freeze': { type: 'boolean' },
    },
    allowPositionals: true,
    strict: true,
  })
  if (values.version) {
    process.stdout.write(`${packageVersion()}\n`)
    return 0
  }
  if (values.help || positionals.length === 0) {
    process.stdout.write(HELP)
    return values.help ? 0 : 2
  }
  const tokenFile = values['api-token-file'] ?? process.env.PXD_API_TOKEN_FILE
  const token = tokenFile ? readFileSync(tokenFile, 'utf8').trim() : undefined
  const client = new ApiClient(values.api ?? process.env.PXD_API ?? 'http://127.0.0.1:9001', token)
  const json = values.json === true
  const out = (data: unknown, human: () => string) => process.stdout.write(json ? JSON.stringify(data, null, 2) + '\n' : human())
  const [cmd, sub, name, ...extra] = positionals
  if ((cmd === 'volume' || cmd === 'v') && (sub === 'snapshot' || sub === 'snap' || sub === 'restore' || sub === 'clone')) {
    const flags = { name: values.name, snapshot: values.snapshot, noFreeze: values['no-freeze'] === true }
    const usage = (message: string) => new UsageError(message)
    if (sub === 'restore' || sub === 'clone') {
      if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`)
      return (sub === 'restore' ? restoreCommand : cloneCommand)(client, name, flags, out, usage)
    }
    return snapshotCommand(client, positionals.slice(2), flags, out, usage)
  }
  if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`)

  if (cmd === 'status' && sub === undefined) {
    // The server answers with StatusBody; client.ts's NodeStatus is the older subset of it.
    const [s, nodes] = await Promise.all([
      client.status() as unknown as Promise<StatusBody>,
      client.listNodes().catch(() => null),
    ])
    const peers = nodes && peerSummary(nodes, s.nodeId)
    out({ ...s, peers }, () => renderStatus(s, peers))
    return 0
  }
  if (cmd === 'cluster' && sub === 'list' && name === undefined) {
    const nodes = await client.listNodes()
    out(nodes, () => renderTable(['NODE', 'STATE', 'PEER ADDRESS', 'USED', 'FREE', 'VERSION'],
      nodes.map((n) => [n.nodeId, `${n.online ? 'online' : n.offlineSince ? `offline since ${n.offlineSince}` : 'offline'}${n.draining ? ', draining' : ''}`, n.peerAddress ?? '-',
        n.capacity ? formatSize(n.capacity.total - n.capacity.free) : '-', n.capacity ? formatSize(n.capacity.free) : '-', n.version])))
    return 0
  }
  if (cmd === 'cluster' && (sub === 'drain' || sub === 'remove' || sub === 'delete')) {
    if (!name) throw new UsageError(`pxctl cluster ${sub} needs a NODE`)
    if (sub === 'drain') {
      const r = await drainCommand(client, name, { cancel: values.cancel === true, wait: values['no-wait'] !== true, out: json ? () => undefined : (l) => process.stdout.write(l) })
      if (json) out(r, () => '')
      return 0
    }
    await client.removeNode(name)
    out({ removed: name }, () => `Node ${name} removed from the cluster\n`)
    return 0
  }
  if (cmd === 'node' && sub === 'restart' && name === undefined) {
    const r = await client.restartNode()
    out(r, () => `pxd is restarting in place: process ${r.pid} takes over; volumes stay mounted\n`)
    return 0
  }
  if (cmd === 'cluster' && sub === 'rebalance' && name === undefined) {
    const moved = await rebalanceCommand(client, { out: json ? () => undefined : (l) => process.stdout.write(l) })
    if (json) out({ moved }, () => '')
    return 0
  }
  if (cmd === 'volume' || cmd === 'v') {
    const needName = () => {
      if (!name) throw new UsageError(`pxctl volume ${sub} needs a volume NAME`)
      return name
    }
    switch (sub) {
      case 'create': {
        const options: Record<string, string> = {}
        for (const kv of values.opt ?? []) {
          const eq = kv.indexOf('=')
          if (eq <= 0) throw new UsageError(`--opt takes KEY=VALUE, got "${kv}"`)
          options[kv.slice(0, eq)] = kv.slice(eq + 1)
        }
        if (values.size !== undefined) options.size = values.size
        if (values.repl !== undefined) options.repl = values.repl
        if (values.fs !== undefined) options.fs = values.fs
        if (values.shared || values.sharedv4) options.shared = 'true'
        const v = await client.createVolume(needName(), options)
        out(v, () => `Volume ${v.name} created (id ${v.id}, ${formatSize(v.size)}, repl ${v.repl}, ${v.fs})\n`)
        return 0
      }
      case 'list':
      case 'ls': {
        if (name) throw new UsageError('pxctl volume list takes no NAME')
        const vols = await client.listVolumes()
        out(vols, () => renderTable(['NAME', 'ID', 'SIZE', 'REPL', 'FS', 'SHARED', 'STATE', 'HEALTH', 'ATTACHED ON', 'MOUNTPOINT'],
          vols.map((v) => [v.name, v.id, formatSize(v.size), String(v.repl), v.fs, v.shared ? 'yes' : 'no', v.state, v.degraded ? 'degraded' : 'healthy', v.attachedOn ?? '-', v.mountpoint ?? '-'])))
        return 0
      }
      case 'inspect': {
        if (values.watch) return watchVolume(client, needName(), json)
        const v = await client.inspectVolume(needName())
        out(v, () => renderInspect(v))
        return 0
      }
      case 'scrub': {
        const r = await client.scrub(needName())
        out(r, () => renderFields([
          ['Volume', r.volume],
          ['Blocks checked', String(r.checkedBlocks)],
          ['Bad blocks', String(r.badBlocks)],
          ['Repaired', String(r.repairedBlocks)],
          ['Unrecoverable', String(r.unrecoverableBlocks)],
        ]))
        return r.unrecoverableBlocks > 0 ? 1 : 0
      }
      case 'ha-update': {
        if (values.repl === undefined) throw new UsageError('pxctl volume ha-update needs --repl N')
        const v = await client.haUpdate(needName(), Number(values.repl))
        out(v, () => `Volume ${v.name}: repl ${v.repl}, replicas ${v.replicas.map((r) => r.nodeId).join(', ')} (new ones join once resynced; watch with: pxctl volume inspect ${v.name} --watch)\n`)
        return 0
      }
      case 'update': {
        if (values.size === undefined) throw new UsageError('pxctl volume update needs --size N (e.g. --size 20G)')
        const v = await client.resize(needName(), String(values.size))
        out(v, () => `Volume ${v.name}: ${formatSize(v.size)}${v.mountpoint ? ` (its file system at ${v.mountpoint} grew too)` : ''}\n`)
        return 0
      }
      case 'delete':
      case 'rm': {
        const n = needName()
        await client.deleteVolume(n)
        out({ removed: n }, () => `Volume ${n} deleted\n`)
        return 0
      }
      default:
        throw new UsageError(sub ? `unknown volume command "${sub}"` : 'pxctl volume needs a command: create, list, inspect, ha-update, update, scrub, delete')
    }
  }
  if (cmd === 'quarantine') {
    if (sub === 'list' && name === undefined) {
      const list = await client.listQuarantined()
      out(list, () => list.length === 0 ? 'No quarantined replicas on this node\n'
        : renderTable(['NAME', 'VOLUME ID', 'SIZE ON DISK'], list.map((q) => [q.name, q.volumeId, formatSize(q.bytes)])))
      return 0
    }
    if (sub === 'purge') {
      if (!name) throw new UsageError('pxctl quarantine purge needs the NAME that pxctl quarantine list shows')
      await client.purgeQuarantined(name)
      out({ purged: name }, () => `Quarantined replica ${name} deleted\n`)
      return 0
    }
    throw new UsageError(sub ? `unknown quarantine command "${sub}"` : 'pxctl quarantine needs a command: list, purge')
  }
  throw new UsageError(`unknown command "${positionals.join(' ')}"`)
}

interface PeerSummary {
  total: number
  up: number
  down: number
  /** Node ids of the peers that are down. */
  downNodes: string[]
}

/** The other nodes of the cluster: up means holding a live lease. */
function peerSummary(nodes: NodeInfo[], self: string): PeerSummary {
  const peers = nodes.filter((n) => n.nodeId !== self)
  const downNodes = peers.filter((n) => !n.online).map((n) => n.nodeId).sort()
  return { total: peers.length, up: peers.length - downNodes.length, down: downNodes.length, downNodes }
}

const UNKNOWN = 'unknown (the metadata store did not answer)'

function renderStatus(s: StatusBody, peers: PeerSummary | null): string {
  const h = s.health
  const failed = h.notReady.map((name) => `${name} (${h.checks[name]?.error ?? 'failed'})`)
  const c = s.capacity
  const v = s.volumes
  const fields: Array<[string, string]> = [
    ['Status', h.ready ? 'ready' : `NOT READY: ${failed.join('; ')}`],
    ['Node', s.nodeId],
    ['Version', `${s.version}, up ${formatDuration(s.uptimeSeconds)}`],
    ['Metadata', s.kvdb],
    ['Cluster', s.cluster ? `${s.cluster.online} of ${plural(s.cluster.nodes, 'node')} online` : UNKNOWN],
    ['Peers', !peers ? UNKNOWN : peers.total === 0 ? 'none (single node)'
      : `${peers.up} up, ${peers.down} down${peers.down > 0 ? ` (${peers.downNodes.join(', ')})` : ''}`],
    ['Capacity', c ? `${formatSize(c.used)} used of ${formatSize(c.total)} (${formatPercent(c.used, c.total)}), ${formatSize(c.free)} free` : 'unknown'],
    ['Volumes', v ? `${v.total}: ${v.healthy} healthy, ${v.degraded} degraded; ${v.attached} attached` : UNKNOWN],
  ]
  for (const d of s.degradedVolumes ?? []) {
    const head = d.degraded ? `degraded${d.since ? ` since ${d.since}` : ''}` : 'healthy, replicas moving'
    fields.push([`  ${d.name}`, [head, ...d.reasons].join('\n' + ' '.repeat(14))])
  }
  for (const e of s.errors ?? []) fields.push(['Error', e])
  return renderFields(fields)
}

function replicaLine(r: VolumeInfo['replicas'][number]): string {
  const host = r.allocatedBytes === null ? '' : `, ${formatSize(r.allocatedBytes)} on the host`
  if (r.retiring) return `${r.nodeId}: ${r.state.replace(/-/g, ' ')}, retiring (dropped once its replacement is in sync)${host}`
  if (r.state !== 'resyncing' || !r.resync) return `${r.nodeId}: ${r.state.replace(/-/g, ' ')}${host}`
  const eta = r.resync.etaSeconds === null ? '' : `, about ${r.resync.etaSeconds}s left`
  return `${r.nodeId}: resyncing ${r.resync.percent}% (${formatSize(r.resync.bytesToGo)} to scan, ${formatSize(r.resync.copiedBytes)} copied${eta})${host}`
}

/**
 * Follow a volume until every replica is in sync: a progress bar redrawn in place on a
 * terminal, one plain line per second otherwise (logs, pipes). Ctrl-C stops watching.
 */
async function watchVolume(client: ApiClient, name: string, json: boolean): Promise<number> {
  const tty = process.stdout.isTTY && !json
  for (;;) {
    const v = await client.inspectVolume(name)
    const pending = v.replicas.filter((r) => !r.inSync)
    if (json) process.stdout.write(JSON.stringify({ time: new Date().toISOString(), replicas: v.replicas }) + '\n')
    else {
      const parts = v.replicas.map((r) => r.state === 'resyncing' && r.resync ? `${r.nodeId} ${bar(r.resync.percent)} ${r.resync.percent}%` : `${r.nodeId} ${r.state}`)
      const line = `${name}: ${parts.join('  ')}`
      process.stdout.write(tty ? `\r\x1b[K${line}` : `${new Date().toISOString()} ${line}\n`)
    }
    if (pending.length === 0 || pending.every((r) => !r.online)) {
      if (tty) process.stdout.write('\n')
      return pending.length === 0 ? 0 : 1
    }
    await new Promise((resolve) => setTimeout(resolve, 1000))
  }
}

function bar(percent: number, width = 20): string {
  const full = Math.round((percent / 100) * width)
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`
}

/** A shared volume: who serves it, and each client node with its mounts and what it sent. */
function sharingFields(s: SharingInfo): Array<[string, string]> {
  const clients = s.clients.map((c) => `${c.nodeId}: ${c.mounts} mount(s), ${c.ops} operations, ${formatSize(c.bytes)} sent, since ${c.since}`)
  return [
    ['Served by', s.server ?? '- (not attached)'],
    ['Clients', clients.length > 0 ? clients.join('\n' + ' '.repeat(14)) : '-'],
  ]
}

function renderInspect(v: VolumeInfo): string {
  const opts = Object.entries(v.options).map(([k, val]) => `${k}=${val}`).join(', ')
  return renderFields([
    ['Name', v.name],
    ['ID', v.id],
    ['Size', `${formatSize(v.size)} (${v.size} bytes)`],
    ['Replication', String(v.repl)],
    ['File system', `${v.fs} (block size ${v.blockSize})`],
    ['Shared', String(v.shared)],
    ['State', v.state],
    ['Attached on', v.attachedOn ? `${v.attachedOn}${v.attachedFor === 'healing' ? ' (healing only: a background resync, no mount)' : ''}` : '-'],
    ['Epoch', String(v.epoch)],
    ['Mountpoint', v.mountpoint ?? '-'],
    ['Mounts', String(v.mounts)],
    ['Health', v.degraded ? `degraded (${v.replicas.filter((r) => r.inSync && r.online).length} of ${v.repl} replicas in sync and online${v.degradedSince ? `, since ${v.degradedSince}` : ''})` : 'healthy'],
    ...(v.degradedReasons.length > 0 ? [['Why', v.degradedReasons.join('\n' + ' '.repeat(14))] as [string, string]] : []),
    ['Replicas', v.replicas.map(replicaLine).join('\n' + ' '.repeat(14))],
    ...(v.sharing ? sharingFields(v.sharing) : []),
    ['Options', opts || '-'],
    ...(v.parent ? [[v.readOnly ? 'Snapshot of' : 'Cloned from', v.readOnly ? `${v.parent} (read-only)` : v.parent] as [string, string]] : []),
    ...(v.snapshots.length > 0 ? [['Snapshots', v.snapshots.map((s) => `${s.name} (${s.createdAt})`).join('\n' + ' '.repeat(14))] as [string, string]] : []),
    ['Created', v.createdAt],
  ])
}

main(process.argv.slice(2)).then((code) => process.exit(code), (err) => {
  const usage = err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')
  if (process.argv.includes('--json')) {
    const code = usage ? 'USAGE' : isPxdError(err) ? err.code : 'IO_ERROR'
    process.stderr.write(JSON.stringify({ error: { code, message: messageOf(err) } }) + '\n')
  } else {
    process.stderr.write(`pxctl: ${messageOf(err)}\n${usage ? 'Run "pxctl --help" for usage.\n' : ''}`)
  }
  process.exit(usage ? 2 : 1)
})
