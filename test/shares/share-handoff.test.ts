import test from 'ava'
import { isLiveShare, type LiveShare } from '../../src/shares/share-handoff'

const client = { mountpoint: '/run/pxd/mounts/v1', fdname: 'pxd-share-0', mount: { table: 'AAAA', nextNodeid: 2, locks: [], lost: [], server: 'node-a@3', pending: '' } }
const good: LiveShare = { name: 'v1', mountIds: ['m1'], since: '2026-12-04T00:00:00.000Z', keyOptions: {}, client }

test('a handed-over client mount as written is read back; anything else is refused', (t) => {
  t.true(isLiveShare(good))
  t.true(isLiveShare({ ...good, keyOptions: { secretKey: 'k', useClusterSecret: false } }))
  t.false(isLiveShare({ ...good, keyOptions: { passphrase: 'never in the session file' } }), 'a passphrase never travels in the session file')
  t.true(isLiveShare({ ...good, served: { root: '/run/pxd/mounts/v1', replies: [['node-b/7', 'AAAA', 1733270400000]] } }))
  t.true(isLiveShare({ name: 'v1', mountIds: [], since: good.since, keyOptions: {}, served: { root: '/run/pxd/served/v1', replies: [] } }))
  t.true(isLiveShare({ name: 'v1', mountIds: [], since: good.since, keyOptions: {}, served: { root: '/run/pxd/served/v1', replies: [], crashed: true } }))
  t.false(isLiveShare({ name: 'v1', mountIds: [], since: good.since, keyOptions: {}, served: { root: '/run/pxd/served/v1', replies: [], crashed: 'yes' } }))
  t.false(isLiveShare({ ...good, client: undefined }), 'neither a client nor a server')
  t.false(isLiveShare({ ...good, client: { ...client, mountpoint: 'relative/v1' } }))
  t.false(isLiveShare({ ...good, client: { ...client, fdname: 'pxd-fuse' } }))
  t.false(isLiveShare({ ...good, client: { ...client, mount: { ...client.mount, nextNodeid: 1 } } }), 'nodeid 1 is the root: the next one is above it')
  t.false(isLiveShare({ ...good, client: { ...client, mount: { ...client.mount, locks: [1] } } }))
  t.false(isLiveShare({ ...good, served: { root: '/x', replies: [['k', 'v']] } }))
  t.false(isLiveShare(null))
})
