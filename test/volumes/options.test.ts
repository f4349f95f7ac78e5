import test from 'ava'
import { isPxdError } from '../../src/errors'
import { buildSpec, flattenOptions, mergeOptions, parseVolumeRef, specConflicts, validateName, DEFAULT_VOLUME_SIZE } from '../../src/volumes/options'

const GiB = 1024 ** 3
const MiB = 1024 ** 2

const invalid = (t: import('ava').ExecutionContext, fn: () => unknown, pattern: RegExp) => {
  const err = t.throws(fn)
  t.true(isPxdError(err, 'INVALID_ARGUMENT'), `expected INVALID_ARGUMENT, got ${String(err)}`)
  t.regex(err!.message, pattern)
}

test('defaults: 1 GiB, repl 1, ext4, 4K blocks, not shared', (t) => {
  t.deepEqual(buildSpec({}), { size: DEFAULT_VOLUME_SIZE, repl: 1, fs: 'ext4', blockSize: 4096, shared: false, extra: {} })
})

test('sizes: units, bare numbers mean GiB, rounding to 4 KiB', (t) => {
  t.is(buildSpec({ size: '10G' }).size, 10 * GiB)
  t.is(buildSpec({ size: '10' }).size, 10 * GiB)
  t.is(buildSpec({ size: '512M' }).size, 512 * MiB)
  t.is(buildSpec({ size: '512MiB' }).size, 512 * MiB)
  t.is(buildSpec({ size: '1T' }).size, 1024 * GiB)
  t.is(buildSpec({ size: '1.5G' }).size, 1.5 * GiB)
  t.is(buildSpec({ size: '20000001B' }).size, Math.ceil(20000001 / 4096) * 4096)
})

test('bad sizes are refused with a reason', (t) => {
  invalid(t, () => buildSpec({ size: '0' }), /greater than zero/)
  invalid(t, () => buildSpec({ size: '0G' }), /greater than zero/)
  invalid(t, () => buildSpec({ size: '-1G' }), /size/)
  invalid(t, () => buildSpec({ size: 'big' }), /size/)
  invalid(t, () => buildSpec({ size: '10Q' }), /size/)
  invalid(t, () => buildSpec({ size: '1K' }), /smallest volume/)
  invalid(t, () => buildSpec({ size: '99999999999999999999T' }), /size/)
})

test('repl, fs, block_size, shared', (t) => {
  t.is(buildSpec({ repl: '3' }).repl, 3)
  invalid(t, () => buildSpec({ repl: '0' }), /repl.*1 to 3/)
  invalid(t, () => buildSpec({ repl: '4' }), /1 to 3/)
  invalid(t, () => buildSpec({ repl: 'two' }), /whole number/)
  invalid(t, () => buildSpec({ repl: '1.5' }), /whole number/)
  t.is(buildSpec({ fs: 'XFS' }).fs, 'xfs')
  invalid(t, () => buildSpec({ fs: 'ntfs' }), /ext4, xfs/)
  t.is(buildSpec({ block_size: '2K' }).blockSize, 2048)
  t.is(buildSpec({ block_size: '4096' }).blockSize, 4096)
  invalid(t, () => buildSpec({ block_size: '3K' }), /1K, 2K or 4K/)
  t.true(buildSpec({ shared: 'true' }).shared)
  t.false(buildSpec({ shared: 'false' }).shared)
  invalid(t, () => buildSpec({ shared: 'maybe' }), /true or false/)
})

test('Portworx keys are recorded; unknown keys list the known ones', (t) => {
  const spec = buildSpec({ io_priority: 'high', snap_interval: '60', labels: 'app=db;tier=1', nodes: 'n1;n2', aggregation_level: '2', sticky: 'true' })
  t.deepEqual(spec.extra, { io_priority: 'high', snap_interval: '60', labels: 'app=db;tier=1', nodes: 'n1;n2', aggregation_level: '2', sticky: 'true' })
  invalid(t, () => buildSpec({ io_priority: 'urgent' }), /high, medium, low/)
  invalid(t, () => buildSpec({ colour: 'blue' }), /unknown option "colour"; known options: .*repl.*size/)
  invalid(t, () => buildSpec({ labels: 'a=$(rm -rf /)' }), /only letters/)
})

test('inline spec in the name, in any order', (t) => {
  t.deepEqual(parseVolumeRef('name=px_vol,size=10G,repl=3'), { name: 'px_vol', inline: { size: '10G', repl: '3' } })
  t.deepEqual(parseVolumeRef('repl=2,name=db,shared=true'), { name: 'db', inline: { repl: '2', shared: 'true' } })
  t.deepEqual(parseVolumeRef('plain-name_1.0'), { name: 'plain-name_1.0', inline: {} })
  invalid(t, () => parseVolumeRef('size=10G,repl=3'), /no name= key/)
  invalid(t, () => parseVolumeRef('name=a,size'), /expected key=value/)
  invalid(t, () => parseVolumeRef('name=a,size=1G,size=2G'), /given twice/)
})

test('dcos-commons option string and Docker/Mesos option maps', (t) => {
  t.deepEqual(flattenOptions('repl=2,shared=true'), { repl: '2', shared: 'true' })
  // A pod spec string split once at its first "=" by whatever carried it.
  t.deepEqual(flattenOptions({ repl: '2,shared=true' }), { repl: '2', shared: 'true' })
  t.deepEqual(flattenOptions({ size: '10G', Repl: 2 }), { size: '10G', repl: '2' })
  t.deepEqual(flattenOptions(undefined), {})
  invalid(t, () => flattenOptions({ size: { nested: true } }), /must be a string/)
  invalid(t, () => flattenOptions(['repl=2']), /object/)
})

test('merge of inline and options: agreement is fine, contradiction is an error', (t) => {
  t.deepEqual(mergeOptions({ size: '10G' }, { size: '10G', repl: '2' }), { size: '10G', repl: '2' })
  invalid(t, () => mergeOptions({ size: '10G' }, { size: '20G' }), /given twice/)
})

test('names: path traversal, separators and odd characters are refused', (t) => {
  for (const bad of ['a/b', '../etc', '..', 'a..b', '', 'with space', 'semi;colon', 'x'.repeat(129), 'tab\t', 'ü']) {
    invalid(t, () => validateName(bad), /volume name/)
  }
  invalid(t, () => parseVolumeRef('name=../x,size=1G'), /must not contain/)
  t.is(validateName('ok.name-1_2'), 'ok.name-1_2')
})

test('specConflicts: only explicitly requested keys are compared', (t) => {
  const existing = buildSpec({ size: '1G', repl: '1' })
  t.deepEqual(specConflicts(existing, {}), [])
  t.deepEqual(specConflicts(existing, { size: '1G' }), [])
  t.deepEqual(specConflicts(existing, { size: '1024M' }), [])
  t.is(specConflicts(existing, { size: '2G' }).length, 1)
})
