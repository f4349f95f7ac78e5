/** The scale bench's flags: defaults, --quick and what it refuses. */
import test from 'ava'
import { UsageError } from '../../bench/args'
import { parseScaleArgs } from '../../bench/scale-args'
import { parseSize } from '../../src/util/size'

test('defaults: 32 volumes of 512M, 1, 4 and 16 writers, 3 rounds', (t) => {
  const o = parseScaleArgs([])!
  t.like(o, { volumes: 32, volumeSize: parseSize('512M'), fileSize: parseSize('256M'), jobs: [1, 4, 16], rounds: 3, quick: false })
})

test('--quick is a smaller run, and flags after it still apply', (t) => {
  t.like(parseScaleArgs(['--quick'])!, { volumes: 8, jobs: [1, 4], rounds: 1, quick: true })
  t.like(parseScaleArgs(['--quick', '--volumes=12', '--jobs', '1,2,12'])!, { volumes: 12, jobs: [1, 2, 12] })
})

test('--help gives null', (t) => {
  t.is(parseScaleArgs(['-h']), null)
})

test('refuses more writers than volumes, a file that leaves ext4 no room, and unknown flags', (t) => {
  t.throws(() => parseScaleArgs(['--volumes', '8']), { instanceOf: UsageError })
  t.throws(() => parseScaleArgs(['--file', '480M']), { instanceOf: UsageError })
  t.throws(() => parseScaleArgs(['--jobs', '1,x']), { instanceOf: UsageError })
  t.throws(() => parseScaleArgs(['--volumes']), { instanceOf: UsageError })
  t.throws(() => parseScaleArgs(['--gluster']), { instanceOf: UsageError })
})
