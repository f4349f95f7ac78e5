/**
 * A private network for a test cluster: every member (each pxd node, etcd) in a network
 * namespace of its own with one address, all on a bridge that lives in a namespace of its
 * own (so the host's firewall never sees the traffic), and the test process reaching them
 * through one more veth. Links can then be cut between any two members, both ways or one
 * way, with iptables DROP rules inside the members' namespaces: packets vanish, as in a
 * real partition, instead of being refused.
 *
 * Processes are started in a member's namespace with `nsenter --net=/run/netns/NAME`,
 * never `ip netns exec`, which would also give them a private mount namespace and hide
 * their FUSE and volume mounts from the test.
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'

export type Direction = 'both' | 'to' | 'from'

export interface Network {
  /** The address of a member. */
  ip(member: string): string
  /** The address the test process has on the network. */
  readonly hostIp: string
  /** A command prefix that runs a program in the member's namespace. */
  enter(member: string): string[]
  /**
   * Drop packets between two members: 'both' ways, only those `a` sends 'to' `b`, or only
   * those `a` gets 'from' `b`.
   */
  cut(a: string, b: string, direction?: Direction): void
  /** Cut a member from every other member and from the test process. */
  isolate(member: string): void
  /** Remove every cut. */
  heal(): void
  /** Remove the namespaces and links (idempotent). */
  destroy(): void
}

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] })
}

function inNs(ns: string, command: string[]): void {
  execFileSync('nsenter', [`--net=/run/netns/${ns}`, ...command], { stdio: ['ignore', 'ignore', 'pipe'] })
}

/** Make a network with one namespace per member, e.g. ['etcd', 'a', 'b']. */
export function createNetwork(members: string[]): Network {
  if (members.length > 200) throw new Error('at most 200 members')
  for (const m of members) if (!/^[a-z0-9-]{1,12}$/.test(m)) throw new Error(`member name ${m}: 1-12 of [a-z0-9-]`)
  const tag = randomBytes(3).toString('hex')
  const subnet = `10.${100 + (parseInt(tag.slice(0, 2), 16) % 100)}.${parseInt(tag.slice(2, 4), 16)}`
  const nsOf = (m: string) => `pxd-${tag}-${m}`
  const sw = `pxd-${tag}-sw`
  const addresses = new Map(members.map((m, i) => [m, `${subnet}.${i + 1}`]))
  const hostIp = `${subnet}.254`
  const made: string[] = []
  const hostLink = `pxh${tag}`
  let destroyed = false

  const destroy = () => {
    if (destroyed) return
    destroyed = true
    try { ip(['link', 'del', hostLink]) } catch { /* gone with its namespace */ }
    for (const ns of made.reverse()) {
      try { ip(['netns', 'del', ns]) } catch { /* already gone */ }
    }
  }

  try {
    ip(['netns', 'add', sw])
    made.push(sw)
    inNs(sw, ['ip', 'link', 'add', 'br0', 'type', 'bridge'])
    inNs(sw, ['ip', 'link', 'set', 'br0', 'up'])
    inNs(sw, ['ip', 'link', 'set', 'lo', 'up'])
    // The test process's own way in.
    ip(['link', 'add', hostLink, 'type', 'veth', 'peer', 'name', 'host', 'netns', sw])
    inNs(sw, ['ip', 'link', 'set', 'host', 'master', 'br0', 'up'])
    ip(['addr', 'add', `${hostIp}/24`, 'dev', hostLink])
    ip(['link', 'set', hostLink, 'up'])
    members.forEach((m, i) => {
      const ns = nsOf(m)
      ip(['netns', 'add', ns])
      made.push(ns)
      const port = `p${i}`
      inNs(sw, ['ip', 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
      inNs(sw, ['ip', 'link', 'set', port, 'master', 'br0', 'up'])
      inNs(ns, ['ip', 'addr', 'add', `${addresses.get(m)}/24`, 'dev', 'eth0'])
      inNs(ns, ['ip', 'link', 'set', 'eth0', 'up'])
      inNs(ns, ['ip', 'link', 'set', 'lo', 'up'])
    })
  } catch (err) {
    destroy()
    throw new Error(`cannot make the test network (needs root, ip, nsenter): ${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`)
  }

  const addressOf = (m: string) => {
    const a = m === 'host' ? hostIp : addresses.get(m)
    if (!a) throw new Error(`no member ${m}`)
    return a
  }
  const drop = (member: string, chain: 'INPUT' | 'OUTPUT', peer: string) => {
    if (member === 'host') throw new Error('cut links from the members\' side')
    inNs(nsOf(member), ['iptables', '-w', '-A', chain, chain === 'INPUT' ? '-s' : '-d', addressOf(peer), '-j', 'DROP'])
  }

  return {
    ip: addressOf,
    hostIp,
    enter: (m) => ['nsenter', `--net=/run/netns/${nsOf(m)}`],
    cut: (a, b, direction = 'both') => {
      if (direction !== 'from') drop(a, 'OUTPUT', b)
      if (direction !== 'to') drop(a, 'INPUT', b)
    },
    isolate: (m) => {
      for (const other of [...members, 'host']) if (other !== m) {
        drop(m, 'OUTPUT', other)
        drop(m, 'INPUT', other)
      }
    },
    heal: () => {
      for (const m of members) inNs(nsOf(m), ['iptables', '-w', '-F'])
    },
    destroy,
  }
}
