/**
 * The Debian package (scripts/package.sh, npm run package): built from this tree, it holds the
 * project under /usr/lib/pxd without its tests or dev tools, pxd and pxctl in /usr/bin, the unit
 * and the config file as a conffile; it depends on what setup.sh installs and conflicts with
 * nothing; its maintainer scripts reload systemd and never start pxd. It is extracted into a
 * temporary directory (dpkg-deb -x), never installed on this host, and its pxd runs from there.
 */
import test from 'ava'
import { existsSync, promises as fs, readFileSync, readlinkSync } from 'node:fs'
import path from 'node:path'
import { makeTempDir, removeDir } from '../helpers/daemon'
import { REPO_ROOT } from '../helpers/paths'
import { runCommand } from '../helpers/run'

for (const tool of ['/usr/bin/dpkg-deb', '/usr/bin/dpkg']) {
  if (!existsSync(tool)) throw new Error(`the package test needs ${tool} (a Debian host has it)`)
}

const dir = makeTempDir('pxd-package-')
const version = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version
let deb = ''
let root = ''

test.before(async () => {
  const arch = (await runCommand('/usr/bin/dpkg', ['--print-architecture'], 10_000)).stdout.trim()
  // The tree the tests run from is built: package it as it is.
  const built = await runCommand(path.join(REPO_ROOT, 'scripts/package.sh'), ['--no-build', '--out', dir], 50_000)
  if (built.code !== 0) throw new Error(`package.sh failed: ${built.out}`)
  deb = path.join(dir, `pxd_${version}_${arch}.deb`)
  root = path.join(dir, 'root')
  const x = await runCommand('/usr/bin/dpkg-deb', ['-x', deb, root], 30_000)
  if (x.code !== 0) throw new Error(`dpkg-deb -x failed: ${x.out}`)
})

test.after.always(() => removeDir(dir))

const field = (info: string, name: string) => new RegExp(`^ ${name}: (.*)$`, 'm').exec(info)?.[1]

test('control: name, version, what pxd runs with (fuse or fuse3), no conflicts, the config file a conffile', async (t) => {
  const info = await runCommand('/usr/bin/dpkg-deb', ['--info', deb], 10_000)
  t.is(info.code, 0, info.out)
  t.is(field(info.stdout, 'Package'), 'pxd')
  t.is(field(info.stdout, 'Version'), version)
  const depends = (field(info.stdout, 'Depends') ?? '').split(/,\s*/)
  for (const d of ['libfuse2', 'e2fsprogs', 'util-linux', 'mount', 'fuse | fuse3', 'nodejs (>= 20)']) t.true(depends.includes(d), `Depends has ${d}: ${depends.join(', ')}`)
  t.false(/^ (Conflicts|Breaks|Replaces):/m.test(info.stdout), 'no package is pushed off the host')
  const conffiles = await runCommand('/usr/bin/dpkg-deb', ['--info', deb, 'conffiles'], 10_000)
  t.is(conffiles.stdout.trim(), '/etc/pxd/pxd.conf')
})

test('contents: the built project, links on the PATH, the unit for /usr/bin; no tests, sources or dev tools', async (t) => {
  const listing = await runCommand('/usr/bin/dpkg-deb', ['--contents', deb], 30_000)
  t.is(listing.code, 0, listing.out)
  const lines = listing.stdout.split('\n')
  const has = (p: string) => lines.some((l) => l.endsWith(` ${p}`) || l.includes(` ${p} -> `))
  for (const p of ['./usr/lib/pxd/dist/src/cli/pxd.js', './usr/lib/pxd/build/Release/pxd_native.node', './usr/lib/pxd/package.json',
    './usr/lib/pxd/bin/pxd', './usr/lib/pxd/node_modules/pino/package.json', './lib/systemd/system/pxd.service', './etc/pxd/pxd.conf']) {
    t.true(has(p), `the package holds ${p}`)
  }
  t.true(lines.some((l) => / \.\/usr\/bin\/pxd -> \.\.\/lib\/pxd\/bin\/pxd$/.test(l)), 'pxd on the PATH')
  t.true(lines.some((l) => / \.\/usr\/bin\/pxctl -> \.\.\/lib\/pxd\/bin\/pxctl$/.test(l)), 'pxctl on the PATH')
  for (const bad of ['/dist/test/', '/usr/lib/pxd/src/', '/node_modules/ava/', '/node_modules/typescript/', '/node_modules/node-gyp/']) {
    t.false(lines.some((l) => l.includes(bad)), `nothing under ${bad}`)
  }
  t.true(lines.every((l) => l === '' || / root\/root /.test(l)), 'every file belongs to root')
  const unit = await fs.readFile(path.join(root, 'lib/systemd/system/pxd.service'), 'utf8')
  t.regex(unit, /^ExecStart=\/usr\/bin\/pxd$/m)
  t.notRegex(unit, /@BINDIR@/)
  t.is(await fs.readFile(path.join(root, 'etc/pxd/pxd.conf'), 'utf8'), await fs.readFile(path.join(REPO_ROOT, 'packaging/pxd.conf'), 'utf8'))
})

test('the extracted pxd and pxctl run: version, help, the native addon loads', async (t) => {
  t.is(readlinkSync(path.join(root, 'usr/bin/pxd')), '../lib/pxd/bin/pxd')
  const v = await runCommand(path.join(root, 'usr/bin/pxd'), ['--version'], 30_000)
  t.is(v.code, 0, v.out)
  t.true(v.stdout.includes(version), v.stdout)
  const help = await runCommand(path.join(root, 'usr/bin/pxd'), ['--help'], 30_000)
  t.is(help.code, 0, help.out)
  t.regex(help.stdout, /--plugin-socket PATH/)
  const ctl = await runCommand(path.join(root, 'usr/bin/pxctl'), ['--help'], 30_000)
  t.is(ctl.code, 0, ctl.out)
  t.regex(ctl.stdout, /cluster list/)
  const addon = path.join(root, 'usr/lib/pxd/build/Release/pxd_native.node')
  const load = await runCommand(process.execPath, ['-e', 'require(process.argv[1])', addon], 30_000)
  t.is(load.code, 0, load.out)
})

test('postinst and postrm reload systemd when it runs, and never enable, start or stop pxd', async (t) => {
  const control = path.join(dir, 'control')
  t.is((await runCommand('/usr/bin/dpkg-deb', ['-e', deb, control], 10_000)).code, 0)
  // A systemctl that only notes how it was called stands in for the real one.
  const fake = path.join(dir, 'fakebin')
  await fs.mkdir(fake)
  const calls = path.join(dir, 'systemctl-calls')
  await fs.writeFile(path.join(fake, 'systemctl'), `#!/bin/sh\necho "$*" >> ${calls}\n`, { mode: 0o755 })
  const systemd = existsSync('/run/systemd/system')
  for (const [script, arg] of [['postinst', 'configure'], ['postrm', 'remove']] as const) {
    await fs.rm(calls, { force: true })
    const r = await runCommand('/usr/bin/env', [`PATH=${fake}:/usr/bin:/bin`, 'sh', path.join(control, script), arg], 10_000)
    t.is(r.code, 0, r.out)
    const seen = existsSync(calls) ? (await fs.readFile(calls, 'utf8')).trim().split('\n') : []
    t.deepEqual(seen, systemd ? ['daemon-reload'] : [], `${script} ${arg} (systemd ${systemd ? 'runs' : 'does not run'} here)`)
    t.notRegex(await fs.readFile(path.join(control, script), 'utf8'), /systemctl (enable|start|restart|stop)/)
  }
})
