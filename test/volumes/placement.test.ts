import test from 'ava'
import { isPxdError, pxdError } from '../../src/errors'
import { allocatedBytes, placeReplicas, ReplicaPlacement, replicasToDrop } from '../../src/volumes/placement'
import { FakeMembership, GiB, node, openKvdb, putVolume, silent, volumeRecord } from './fakes'

test('allocatedBytes: per node, the sizes of every replica placed there', (t) => {
  const allocated = allocatedBytes([
    volumeRecord('a', { replicas: ['n1', 'n2'], size: 2 * GiB }),
    volumeRecord('b', { replicas: ['n2'], size: 3 * GiB }),
    volumeRecord('c', { replicas: ['n3', 'n1'], size: GiB, inSync: ['n3'] }),
  ])
  t.deepEqual([...allocated].sort(), [['n1', 3 * GiB], ['n2', 5 * GiB], ['n3', GiB]])
  t.is(allocatedBytes([]).size, 0)
})

test('least allocated first, then most free, then by name', (t) => {
  const nodes = [node('n1', { free: 50 * GiB }), node('n2', { free: 80 * GiB }), node('n3', { free: 80 * GiB }), node('n4', { free: 90 * GiB })]
  const allocated = new Map([['n1', 0], ['n2', 5 * GiB], ['n3', 5 * GiB], ['n4', 10 * GiB]])
  t.deepEqual(placeReplicas({ repl: 1, size: GiB, nodes, allocated }), ['n1'])
  t.deepEqual(placeReplicas({ repl: 3, size: GiB, nodes, allocated }), ['n1', 'n2', 'n3'])
  const tied = [node('b', { free: 10 * GiB }), node('c', { free: 20 * GiB }), node('a', { free: 10 * GiB })]
  t.deepEqual(placeReplicas({ repl: 3, size: GiB, nodes: tied, allocated: new Map() }), ['c', 'a', 'b'])
})

test('only online nodes with a known capacity and room for the volume are used', (t) => {
  const nodes = [node('off', { online: false }), node('unknown', { free: null }), node('full', { free: GiB / 2 }), node('ok')]
  t.deepEqual(placeReplicas({ repl: 1, size: GiB, nodes, allocated: new Map() }), ['ok'])
})

test('enough online nodes but too little room is NO_SPACE; too few online nodes is UNSATISFIABLE', (t) => {
  const full = [node('n1', { free: GiB }), node('n2', { free: GiB / 4 })]
  const noSpace = t.throws(() => placeReplicas({ repl: 2, size: GiB, nodes: full, allocated: new Map() }))
  t.true(isPxdError(noSpace, 'NO_SPACE'), String(noSpace))
  t.regex(noSpace!.message, /too full: n2/)
  const few = [node('n1'), node('n2', { online: false })]
  const unsatisfiable = t.throws(() => placeReplicas({ repl: 2, size: GiB, nodes: few, allocated: new Map() }))
  t.true(isPxdError(unsatisfiable, 'UNSATISFIABLE'), String(unsatisfiable))
  t.regex(unsatisfiable!.message, /offline: n2/)
  const single = t.throws(() => placeReplicas({ repl: 2, size: GiB, nodes: [node('n1')], allocated: new Map() }))
  t.true(isPxdError(single, 'UNSATISFIABLE'))
  t.regex(single!.message, /single-node/)
})

test('replicasToDrop: out of sync first, the coordinator\'s last, otherwise in record order', (t) => {
  const record = volumeRecord('v', { replicas: ['n1', 'n2', 'n3'], inSync: ['n1', 'n3'] })
  t.deepEqual(replicasToDrop(record, 'n1', 1), ['n2'])
  t.deepEqual(replicasToDrop(record, 'n1', 2), ['n2', 'n3'])
  t.deepEqual(replicasToDrop(record, 'n3', 2), ['n2', 'n1'])
  t.deepEqual(replicasToDrop(record, null, 3), ['n2', 'n1', 'n3'])
})

test('place: counts what every volume in the kvdb has placed, and leaves out the nodes given', async (t) => {
  const db = await openKvdb(t)
  await putVolume(db, volumeRecord('big', { replicas: ['n1', 'n2'], size: 10 * GiB }))
  await putVolume(db, volumeRecord('small', { replicas: ['n3'], size: GiB }))
  const membership = new FakeMembership([node('n1'), node('n2'), node('n3'), node('n4')])
  const placement = new ReplicaPlacement({ kvdb: db, membership, replicas: { create: async () => {}, drop: async () => {} }, log: silent })
  t.deepEqual(await placement.place(2, GiB), ['n4', 'n3'])
  t.deepEqual(await placement.place(2, GiB, ['n4']), ['n3', 'n1'])
  t.true(isPxdError(await t.throwsAsync(placement.place(2, GiB, ['n1', 'n2', 'n3'])), 'UNSATISFIABLE'))
})

test('create says which replicas failed and why; drop tries every node even when one fails', async (t) => {
  const db = await openKvdb(t)
  const created: string[] = []
  const dropped: string[] = []
  const replicas = {
    create: async (nodeId: string, volumeId: string, size: number) => {
      if (nodeId === 'n2') throw pxdError('PEER_UNAVAILABLE', 'link down')
      created.push(`${nodeId}/${volumeId}/${size}`)
    },
    drop: async (nodeId: string, volumeId: string) => {
      if (nodeId === 'n1') throw pxdError('PEER_UNAVAILABLE', 'link down')
      dropped.push(`${nodeId}/${volumeId}`)
    },
  }
  const placement = new ReplicaPlacement({ kvdb: db, membership: new FakeMembership([]), replicas, log: silent })
  const record = volumeRecord('v', { replicas: ['n1', 'n2', 'n3'], size: 2 * GiB })
  t.deepEqual(await placement.create(['n1', 'n2', 'n3'], record), ['n2: link down'])
  t.deepEqual(created.sort(), [`n1/${record.id}/${2 * GiB}`, `n3/${record.id}/${2 * GiB}`])
  t.deepEqual(await placement.create([], record), [])
  await placement.drop(record)
  t.deepEqual(dropped.sort(), [`n2/${record.id}`, `n3/${record.id}`])
})
