import { execFileSync } from 'node:child_process'
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import test from 'ava'
import { REPO_ROOT } from '../helpers/paths'

const SETUP = path.join(REPO_ROOT, 'scripts', 'setup.sh')

/** What scripts/setup.sh would install on a host where exactly `installed` are installed (dpkg-query stubbed). */
function wouldInstall(profile: 'run' | 'test', installed: string[]): string[] {
  const bin = mkdtempSync(path.join(os.tmpdir(), 'pxd-setup-'))
  try {
    const stub = path.join(bin, 'dpkg-query')
    writeFileSync(stub, `#!/bin/sh\nfor p in ${installed.join(' ')}; do [ "$p" = "$3" ] && { printf 'install ok installed'; exit 0; }; done\nexit 1\n`)
    chmodSync(stub, 0o755)
    const out = execFileSync('bash', [SETUP, profile], { env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, PXD_SETUP_DRY_RUN: '1' }, encoding: 'utf8' })
    const line = out.split('\n').find((l) => l.startsWith('would install:'))
    if (line === undefined) throw new Error(`setup.sh printed no plan: ${out}`)
    return line.slice('would install:'.length).trim().split(/\s+/).filter(Boolean)
  } finally {
    rmSync(bin, { recursive: true, force: true })
  }
}

test('a host with fuse3 keeps it: set-up does not ask for fuse, which would remove it', (t) => {
  const plan = wouldInstall('run', ['fuse3'])
  t.false(plan.includes('fuse'), plan.join(' '))
  t.true(plan.includes('libfuse2'), 'libfuse2 installs beside FUSE 3 and is still needed')
})

test('a host with neither fuse nor fuse3 gets fuse; one with fuse gets nothing FUSE more', (t) => {
  t.true(wouldInstall('run', []).includes('fuse'))
  t.deepEqual(wouldInstall('run', ['fuse', 'libfuse2', 'e2fsprogs', 'util-linux', 'mount', 'libxxhash-dev']), [])
})

test('the run profile brings the block-hash header the addon is built with', (t) => {
  t.true(wouldInstall('run', ['fuse']).includes('libxxhash-dev'))
})

test('the test profile adds the test tools; apt-get is told never to remove a package', (t) => {
  const plan = wouldInstall('test', ['fuse3'])
  for (const p of ['fio', 'etcd-server', 'docker.io']) t.true(plan.includes(p), `${p} in ${plan.join(' ')}`)
  t.false(plan.includes('fuse'))
  t.regex(readFileSync(SETUP, 'utf8'), /apt-get install [^\n]*--no-remove/)
})
