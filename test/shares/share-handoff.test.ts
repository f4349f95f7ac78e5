import test from 'ava'
import { isLiveShare, type LiveShare } from '../../src/shares/share-handoff'

const good: LiveShare = {
  name: 'v1', mountpoint: '/run/pxd/mounts/v1', mountIds: ['m1'], since: '2026-12-04T00:00:00.000Z', keyOptions: {}, fdname: 'pxd-share-0',
  mount: { table: 'AAAA', nextNodeid: 2, locks: [], lost: [], server: 'node-a@3' },
}

test('a handed-over client mount as written is read back; anything else is refused', (t) => {
  t.true(isLiveShare(good))
  t.true(isLiveShare({ ...good, keyOptions: { secretKey: 'k', useClusterSecret: false } }))
  t.false(isLiveShare({ ...good, keyOptions: { passphrase: 'never in the session file' } }), 'a passphrase never travels in the session file')
  t.false(isLiveShare({ ...good, mountpoint: 'relative/v1' }))
  t.false(isLiveShare({ ...good, fdname: 'pxd-fuse' }))
  t.false(isLiveShare({ ...good, mount: { ...good.mount, nextNodeid: 1 } }), 'nodeid 1 is the root: the next one is above it')
  t.false(isLiveShare({ ...good, mount: { ...good.mount, locks: [1] } }))
  t.false(isLiveShare(null))
})
