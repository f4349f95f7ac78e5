/**
 * The test network the partition tests stand on: members reach each other and the test
 * process; a cut drops exactly the packets it names; heal restores everything.
 */
import test from 'ava'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { createNetwork, type Network } from '../helpers/network'
import { stopChild } from '../helpers/mount-namespace'

const PORT = 7000
let network: Network
const servers: ChildProcess[] = []

test.before(async () => {
  assertIntegrationPreconditions()
  network = createNetwork(['a', 'b', 'c'])
  for (const m of ['a', 'b', 'c']) {
    const script = `require('net').createServer((s) => s.end('${m}')).listen(${PORT}, '${network.ip(m)}', () => console.log('up'))`
    const child = spawn(network.enter(m)[0]!, [...network.enter(m).slice(1), process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
    servers.push(child)
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()))
  }
})

test.after.always(async () => {
  for (const s of servers) await stopChild(s, 5000)
  network?.destroy()
})

/** Whether `from` gets the greeting of `to` within a second. */
function reaches(from: string, to: string): boolean {
  const script = `const s = require('net').connect(${PORT}, '${network.ip(to)}'); let got = ''; s.on('data', (d) => got += d); s.on('end', () => process.exit(got === '${to}' ? 0 : 2)); s.on('error', () => process.exit(1)); setTimeout(() => process.exit(3), 1000)`
  if (from === 'host') {
    return spawnSync(process.execPath, ['-e', script]).status === 0
  }
  const [cmd, ...args] = network.enter(from)
  return spawnSync(cmd!, [...args, process.execPath, '-e', script]).status === 0
}

test.serial('members reach each other and the test process reaches every member', (t) => {
  for (const from of ['a', 'b', 'c', 'host']) for (const to of ['a', 'b', 'c']) {
    if (from !== to) t.true(reaches(from, to), `${from} -> ${to}`)
  }
})

test.serial('a cut both ways separates exactly two members; heal joins them again', (t) => {
  network.cut('a', 'b')
  t.false(reaches('a', 'b'))
  t.false(reaches('b', 'a'))
  t.true(reaches('a', 'c'))
  t.true(reaches('c', 'b'))
  t.true(reaches('host', 'a'))
  network.heal()
  t.true(reaches('a', 'b'))
  t.true(reaches('b', 'a'))
})

test.serial('a one-way cut drops only the packets it names; isolate cuts a member from all', (t) => {
  const rules = (m: string) => {
    const [cmd, ...args] = network.enter(m)
    return spawnSync(cmd!, [...args, 'iptables', '-S'], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.startsWith('-A'))
  }
  network.cut('a', 'c', 'to')
  t.deepEqual(rules('a'), [`-A OUTPUT -d ${network.ip('c')}/32 -j DROP`])
  t.deepEqual(rules('c'), [], 'c still takes what a would send')
  t.false(reaches('a', 'c'), 'a cannot send to c')
  t.true(reaches('b', 'c'))
  network.heal()
  network.cut('a', 'c', 'from')
  t.deepEqual(rules('a'), [`-A INPUT -s ${network.ip('c')}/32 -j DROP`])
  network.heal()
  network.isolate('b')
  t.false(reaches('a', 'b'))
  t.false(reaches('host', 'b'))
  t.true(reaches('a', 'c'))
  network.heal()
  t.true(reaches('host', 'b'))
})

test.serial('nothing of the network is left once destroyed', (t) => {
  const probe = createNetwork(['x'])
  probe.destroy()
  const left = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout
  t.false(left.includes('-x'), left)
})
