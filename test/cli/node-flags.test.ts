import { readFileSync } from 'node:fs'
import path from 'node:path'
import test from 'ava'
import { DAEMON_NODE_FLAGS, missingNodeFlags } from '../../src/cli/node-flags'
import { REPO_ROOT } from '../helpers/paths'

const read = (file: string) => readFileSync(path.join(REPO_ROOT, file), 'utf8')

test('every launcher of the daemon passes the node flags', (t) => {
  const shebang = read('bin/pxd').split('\n')[0]!
  const start = read('scripts/start.sh').split('\n').find((l) => l.startsWith('exec node'))
  const entrypoint = read('Dockerfile').split('\n').find((l) => l.startsWith('ENTRYPOINT'))
  t.truthy(start, 'scripts/start.sh execs node')
  t.truthy(entrypoint, 'the Dockerfile has an ENTRYPOINT')
  for (const flag of DAEMON_NODE_FLAGS) {
    t.true(shebang.split(/\s+/).includes(flag), `bin/pxd's shebang passes ${flag}: ${shebang}`)
    t.true(start!.split(/\s+/).includes(flag), `scripts/start.sh passes ${flag}: ${start}`)
    t.true((JSON.parse(entrypoint!.slice('ENTRYPOINT'.length)) as string[]).includes(flag), `the ENTRYPOINT passes ${flag}: ${entrypoint}`)
  }
})

test('missingNodeFlags names what a command line lacks', (t) => {
  t.deepEqual(missingNodeFlags([...DAEMON_NODE_FLAGS, '--cpu-prof']), [])
  t.deepEqual(missingNodeFlags(['--cpu-prof']), [...DAEMON_NODE_FLAGS])
})
