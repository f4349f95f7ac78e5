// The container image, checked without Docker (default, a few seconds) and, opt-in, built
// and run with the real Docker engine.
//
// Default tests:
//  - every COPY source taken from the build context is tracked in git and let through by
//    .dockerignore (an allow-list);
//  - every path the runtime stage copies from the build stage is something the build stage
//    copies in or makes: the build stage's RUN steps are modelled (npm ci makes node_modules,
//    node-gyp rebuild makes build/Release/<target>.node from binding.gyp, tsc makes outDir
//    from the .ts files that tsconfig includes and the stage has), and a RUN step the model
//    does not know fails the test rather than being guessed at;
//  - the runtime stage installs every Debian package pxd needs (scripts/setup.sh's run list)
//    and one providing each system command pxd runs;
//  - the documented `docker run` line (Dockerfile header, README) mounts the directories pxd
//    uses by default, as `pxd --help` states them;
//  - the entry point starts: the files the runtime stage holds are assembled in a temp dir
//    (package.json, dist/src, the addon, bin/, node_modules with the production packages of
//    package-lock.json) and ENTRYPOINT runs there with --help.
//
// Opt-in (PXD_TEST_DOCKER_BUILD=1; several minutes the first time, see README "Development"):
// a real `docker build` of the Dockerfile with nothing pulled. node:20-bookworm and
// node:20-bookworm-slim are stood in for by a Debian bookworm root file system made with
// mmdebstrap from the Debian mirror plus this machine's Node 20 (cached as a tarball under
// PXD_TEST_DOCKER_BUILD_CACHE, default /var/cache/pxd-test); dockerd runs in a private mount
// namespace as in docker.test.ts; the stand-in also trusts this machine's extra CA
// certificates (a TLS proxy in front of the npm registry). The image is then run with --help,
// and with the documented `docker run` flags (--privileged, and the capability flags that can
// replace it) as a daemon that serves a volume to a busybox container.
import test from 'ava'
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { freePort } from '../helpers/daemon'
import { DOCKERD, DOCKER_CLI, importBusyboxImage, startDockerEngine, type DockerEngine } from '../helpers/docker-engine'
import { createMountNamespace, describeResult, runCommand, type MountNamespace } from '../helpers/mount-namespace'
import { REPO_ROOT } from '../helpers/paths'

const DOCKERFILE = path.join(REPO_ROOT, 'Dockerfile')
const DOCKERIGNORE = path.join(REPO_ROOT, '.dockerignore')

// ---------------------------------------------------------------------------------------
// Dockerfile parsing (the subset this project uses; anything else is an error, not a guess)

interface Instruction {
  keyword: string
  args: string
  line: number
}

interface Stage {
  index: number
  base: string
  name: string | undefined
  instructions: Instruction[]
}

interface Copy {
  from: string | undefined
  sources: string[]
  dest: string
  line: number
}

/** Instructions, with continuation lines joined and comments dropped (also inside continuations). */
function instructionsOf(text: string): Instruction[] {
  const out: Instruction[] = []
  let current: string | undefined
  let start = 0
  text.split('\n').forEach((raw, i) => {
    const trimmed = raw.trim()
    if (trimmed.startsWith('#') || (trimmed === '' && current === undefined)) return
    if (trimmed === '') return
    if (current === undefined) {
      current = ''
      start = i + 1
    }
    if (/\\\s*$/.test(raw)) {
      current += raw.replace(/\\\s*$/, '') + ' '
      return
    }
    current += raw
    const m = /^\s*(\S+)\s*(.*)$/s.exec(current)!
    out.push({ keyword: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start })
    current = undefined
  })
  if (current !== undefined) throw new Error('the Dockerfile ends inside a continued line')
  return out
}

function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = []
  for (const ins of instructionsOf(text)) {
    if (ins.keyword === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args)
      if (!m) throw new Error(`Dockerfile line ${ins.line}: cannot read FROM ${ins.args}`)
      stages.push({ index: stages.length, base: m[1]!, name: m[2]?.toLowerCase(), instructions: [] })
      continue
    }
    const stage = stages[stages.length - 1]
    if (stage === undefined) {
      if (ins.keyword !== 'ARG') throw new Error(`Dockerfile line ${ins.line}: ${ins.keyword} before the first FROM`)
      continue
    }
    stage.instructions.push(ins)
  }
  return stages
}

function parseCopy(ins: Instruction): Copy {
  if (ins.keyword === 'ADD') throw new Error(`Dockerfile line ${ins.line}: ADD (remote URLs, tar extraction) is not used here; use COPY`)
  let rest = ins.args
  let from: string | undefined
  for (;;) {
    const flag = /^--([a-z-]+)(?:=(\S*))?\s+/.exec(rest)
    if (!flag) break
    if (flag[1] === 'from') from = flag[2]
    else if (!['chown', 'chmod', 'link'].includes(flag[1]!)) throw new Error(`Dockerfile line ${ins.line}: COPY --${flag[1]} is not understood by this test`)
    rest = rest.slice(flag[0].length)
  }
  const parts = rest.startsWith('[') ? (JSON.parse(rest) as string[]) : rest.split(/\s+/)
  if (parts.length < 2) throw new Error(`Dockerfile line ${ins.line}: COPY needs a source and a destination`)
  if (parts.some((p) => p.includes('$'))) throw new Error(`Dockerfile line ${ins.line}: variables in COPY are not understood by this test`)
  return { from: from?.toLowerCase(), sources: parts.slice(0, -1), dest: parts[parts.length - 1]!, line: ins.line }
}

/** ENTRYPOINT or CMD in exec (JSON) form; the shell form would put sh in front of node. */
function execForm(ins: Instruction): string[] {
  if (!ins.args.startsWith('[')) throw new Error(`Dockerfile line ${ins.line}: use the exec form ["node", ...] for ${ins.keyword}, so that pxd gets SIGTERM`)
  return JSON.parse(ins.args) as string[]
}

function fromStage(stages: Stage[], ref: string): Stage | undefined {
  return /^\d+$/.test(ref) ? stages[Number(ref)] : stages.find((s) => s.name === ref)
}

// ---------------------------------------------------------------------------------------
// .dockerignore (moby's patternmatcher rules: last match wins, "!" re-includes, a pattern
// matching a parent directory matches everything under it, ** crosses directories)

interface IgnoreRule {
  negate: boolean
  regex: RegExp
  text: string
}

function globRegex(pattern: string): RegExp {
  let re = ''
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!
    if (c === '*') {
      if (pattern[i + 1] === '*') {
        i++
        if (pattern[i + 1] === '/') {
          i++
          re += '(?:.*/)?'
        } else re += '.*'
      } else re += '[^/]*'
    } else if (c === '?') re += '[^/]'
    else if (c === '\\' && i + 1 < pattern.length) re += '\\' + pattern[++i]!
    else re += /[.+^${}()|[\]\\]/.test(c) ? '\\' + c : c
  }
  return new RegExp(`^${re}$`)
}

function parseDockerignore(text: string): IgnoreRule[] {
  const rules: IgnoreRule[] = []
  for (const raw of text.split('\n')) {
    let line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const negate = line.startsWith('!')
    if (negate) line = line.slice(1).trim()
    line = path.posix.normalize(line).replace(/^\/+/, '').replace(/\/+$/, '')
    if (line === '.' || line === '') continue
    rules.push({ negate, regex: globRegex(line), text: raw.trim() })
  }
  return rules
}

/** Whether the build context leaves this repository path (file or directory) out. */
function excluded(rules: IgnoreRule[], file: string): { excluded: boolean; by?: string } {
  const parts = file.split('/')
  const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'))
  let result: { excluded: boolean; by?: string } = { excluded: false }
  for (const rule of rules) {
    if (candidates.some((c) => rule.regex.test(c))) result = { excluded: !rule.negate, by: rule.text }
  }
  return result
}

// ---------------------------------------------------------------------------------------
// The repository as the build context sees it

function gitTrackedFiles(): string[] {
  const out = execFileSync('git', ['-C', REPO_ROOT, 'ls-files', '-z'], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
  return out.split('\0').filter((f) => f !== '' && existsSync(path.join(REPO_ROOT, f)))
}

/** The files `docker build .` sends from a clean checkout: tracked, and not left out by .dockerignore. */
function contextFiles(rules: IgnoreRule[]): string[] {
  return gitTrackedFiles().filter((f) => !excluded(rules, f).excluded)
}

// ---------------------------------------------------------------------------------------
// A model of what a build stage holds: the files it copies in and what its RUN steps make

class StageFiles {
  /** Absolute paths of files. */
  readonly files = new Set<string>()
  /** Absolute paths of directories a command made as a whole (node_modules). */
  readonly trees = new Set<string>()

  has(p: string): boolean {
    if (this.files.has(p) || this.trees.has(p)) return true
    for (const t of this.trees) if (p.startsWith(t + '/')) return true
    for (const f of this.files) if (f.startsWith(p + '/')) return true
    return false
  }

  filesUnder(dir: string): string[] {
    return [...this.files].filter((f) => f.startsWith(dir + '/'))
  }
}

interface StageModel {
  stage: Stage
  files: StageFiles
  workdir: string
  /** What each RUN step was understood as, for the test log. */
  steps: string[]
}

/** Where COPY puts each source file of the context; directories are copied by their contents. */
function copyInto(model: StageModel, copy: Copy, context: string[], problems: string[]): void {
  const dest = path.posix.resolve(model.workdir, copy.dest)
  const destIsDir = copy.dest.endsWith('/') || copy.dest === '.' || copy.sources.length > 1
  for (const source of copy.sources) {
    const src = path.posix.normalize(source).replace(/^\.?\/+/, '').replace(/\/+$/, '')
    const glob = /[*?[]/.test(src) ? globRegex(src) : undefined
    const matches = glob ? context.filter((f) => glob.test(f)) : context.filter((f) => f === src || f.startsWith(src + '/'))
    if (matches.length === 0) {
      problems.push(`COPY ${source} (line ${copy.line}): nothing in the build context matches`)
      continue
    }
    for (const f of matches) {
      if (f === src || glob) model.files.files.add(destIsDir ? path.posix.join(dest, path.posix.basename(f)) : dest)
      else model.files.files.add(path.posix.join(dest, f.slice(src.length + 1)))
    }
  }
}

function readJson<T>(file: string): T {
  return JSON.parse(readFileSync(file, 'utf8')) as T
}

/**
 * What one shell command of a build stage needs and makes. Only the commands this
 * Dockerfile uses are known; another one is an error that asks for the model to be taught.
 */
function runStep(model: StageModel, command: string, line: number, problems: string[]): void {
  const wd = model.workdir
  const need = (rel: string, why: string) => {
    if (!model.files.has(path.posix.join(wd, rel))) {
      problems.push(`RUN ${command} (line ${line}) needs ${rel} (${why}), which the stage has not got at that point`)
    }
  }
  const words = command.split(/\s+/)
  const tool = words[0] === 'npx' ? words.find((w, i) => i > 0 && !w.startsWith('-')) : words[0]
  if (words[0] === 'npm' && words[1] === 'ci') {
    need('package.json', 'npm ci')
    need('package-lock.json', 'npm ci')
    model.files.trees.add(path.posix.join(wd, 'node_modules'))
    model.steps.push(`${command}: node_modules`)
  } else if (words[0] === 'npm' && words[1] === 'prune') {
    need('node_modules', 'npm prune')
    model.steps.push(`${command}: node_modules without dev dependencies`)
  } else if (tool === 'node-gyp' && words.includes('rebuild')) {
    need('binding.gyp', 'node-gyp')
    need('node_modules/node-gyp', 'npx --no-install node-gyp')
    const gyp = readJson<{ targets: Array<{ target_name: string; sources: string[]; include_dirs?: string[] }> }>(path.join(REPO_ROOT, 'binding.gyp'))
    const made: string[] = []
    for (const target of gyp.targets) {
      for (const source of target.sources) need(source, `a source of ${target.target_name}`)
      if ((target.include_dirs ?? []).some((d) => d.includes('node-addon-api'))) need('node_modules/node-addon-api', 'include_dirs of binding.gyp')
      const out = path.posix.join(wd, 'build', 'Release', `${target.target_name}.node`)
      model.files.files.add(out)
      made.push(out)
    }
    model.steps.push(`${command}: ${made.join(', ')}`)
  } else if (tool === 'tsc') {
    const p = words.indexOf('-p')
    const configRel = p >= 0 ? words[p + 1]! : 'tsconfig.json'
    need(configRel, 'tsc -p')
    need('node_modules/typescript', 'npx --no-install tsc')
    const config = readJson<{ compilerOptions: { outDir: string; rootDir?: string }; include: string[] }>(path.join(REPO_ROOT, configRel))
    const rootDir = path.posix.join(wd, config.compilerOptions.rootDir ?? '.')
    const outDir = path.posix.join(wd, config.compilerOptions.outDir)
    const include = config.include.map((g) => globRegex(g))
    let count = 0
    for (const file of [...model.files.files]) {
      const rel = path.posix.relative(wd, file)
      if (!rel.endsWith('.ts') || rel.endsWith('.d.ts') || !include.some((r) => r.test(rel))) continue
      model.files.files.add(path.posix.join(outDir, path.posix.relative(rootDir, file).replace(/\.ts$/, '.js')))
      count++
    }
    model.steps.push(`${command}: ${count} .js files under ${outDir}`)
  } else if ((words[0] === 'apt-get' && ['update', 'install'].includes(words[1] ?? '')) || (words[0] === 'rm' && words.includes('/var/lib/apt/lists/*'))) {
    // Debian packages for the build (what they install is checked against setup.sh's build_pkgs).
    model.steps.push(`${command}: Debian packages`)
  } else {
    problems.push(`RUN ${command} (line ${line}): this test does not know what it needs or makes; teach runStep() in dockerfile.test.ts`)
  }
}

function modelStage(stage: Stage, context: string[], problems: string[]): StageModel {
  const model: StageModel = { stage, files: new StageFiles(), workdir: '/', steps: [] }
  for (const ins of stage.instructions) {
    if (ins.keyword === 'WORKDIR') model.workdir = path.posix.resolve(model.workdir, ins.args)
    else if (ins.keyword === 'COPY' || ins.keyword === 'ADD') {
      const copy = parseCopy(ins)
      if (copy.from !== undefined) problems.push(`line ${ins.line}: the build stage copies from another stage; model it`)
      else copyInto(model, copy, context, problems)
    } else if (ins.keyword === 'RUN') {
      for (const command of ins.args.split('&&').map((c) => c.trim()).filter((c) => c !== '')) runStep(model, command, ins.line, problems)
    }
  }
  return model
}

// ---------------------------------------------------------------------------------------
// Shared facts

interface Facts {
  stages: Stage[]
  runtime: Stage
  rules: IgnoreRule[]
  context: string[]
}

function facts(): Facts {
  const stages = parseDockerfile(readFileSync(DOCKERFILE, 'utf8'))
  const runtime = stages[stages.length - 1]
  if (runtime === undefined) throw new Error('the Dockerfile has no FROM')
  const rules = existsSync(DOCKERIGNORE) ? parseDockerignore(readFileSync(DOCKERIGNORE, 'utf8')) : []
  return { stages, runtime, rules, context: contextFiles(rules) }
}

function copiesOf(stage: Stage): Copy[] {
  return stage.instructions.filter((i) => i.keyword === 'COPY' || i.keyword === 'ADD').map(parseCopy)
}

function entrypointOf(stage: Stage): string[] {
  const ins = [...stage.instructions].reverse().find((i) => i.keyword === 'ENTRYPOINT')
  if (!ins) throw new Error('the runtime stage has no ENTRYPOINT')
  return execForm(ins)
}

/** Packages named by `apt-get install` in a stage's RUN steps. */
function aptInstalled(stage: Stage): string[] {
  const pkgs: string[] = []
  for (const ins of stage.instructions.filter((i) => i.keyword === 'RUN')) {
    for (const command of ins.args.split(/&&|;/)) {
      const words = command.trim().split(/\s+/)
      const at = words.indexOf('install')
      if (!['apt-get', 'apt'].includes(words[0] ?? '') || at < 0) continue
      pkgs.push(...words.slice(at + 1).filter((w) => !w.startsWith('-')))
    }
  }
  return pkgs
}

/** The `docker run` line in the Dockerfile's header comment, as arguments. */
function documentedRunLine(): string[] {
  const lines = readFileSync(DOCKERFILE, 'utf8').split('\n')
  const start = lines.findIndex((l) => /^#\s+docker run /.test(l))
  if (start < 0) throw new Error('the Dockerfile header has no "#   docker run ..." line')
  let text = ''
  for (let i = start; i < lines.length; i++) {
    const l = lines[i]!.replace(/^#\s?/, '')
    text += l.replace(/\\\s*$/, ' ')
    if (!/\\\s*$/.test(l)) break
  }
  return text.trim().split(/\s+/)
}

/** The flags the Dockerfile header documents instead of --privileged (single quotes group words). */
function documentedCapabilityFlags(): string[] {
  const line = readFileSync(DOCKERFILE, 'utf8').split('\n').find((l) => /^#\s+--cap-add /.test(l))
  if (line === undefined) throw new Error('the Dockerfile header has no "#     --cap-add ..." line (the flags instead of --privileged)')
  return [...line.replace(/^#\s+/, '').matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!)
}

const CAPABILITY_NAMES = ['CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP',
  'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER', 'SYS_MODULE', 'SYS_RAWIO',
  'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE', 'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD',
  'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP', 'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ',
  'PERFMON', 'BPF', 'CHECKPOINT_RESTORE']

/** Capabilities the kernel knows that this process's bounding set lacks (a --privileged container would need them). */
function missingCapabilities(): string[] {
  const last = Number(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8'))
  const bounding = BigInt('0x' + (/^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0'))
  const missing: string[] = []
  for (let bit = 0; bit <= last; bit++) if ((bounding & (1n << BigInt(bit))) === 0n) missing.push(`CAP_${CAPABILITY_NAMES[bit] ?? bit}`)
  return missing
}

/** The `docker run` command of README's "Running pxd in a container" section, as arguments. */
function readmeRunLine(): string[] {
  const readme = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8')
  const section = readme.split(/^## /m).find((s) => s.startsWith('Running pxd in a container'))
  if (section === undefined) throw new Error('README.md has no "## Running pxd in a container" section')
  const lines = section.split('\n')
  const start = lines.findIndex((l) => /^docker run /.test(l))
  if (start < 0) throw new Error('README "Running pxd in a container" has no docker run line')
  let text = ''
  for (let i = start; i < lines.length; i++) {
    const l = lines[i]!
    text += l.replace(/\\\s*$/, ' ')
    if (!/\\\s*$/.test(l)) break
  }
  return text.trim().split(/\s+/)
}

/** `-v SRC:DST[:OPTS]` bind mounts of a docker run line. */
function bindsOf(args: string[]): Array<{ src: string; dst: string; opts: string[] }> {
  const binds: Array<{ src: string; dst: string; opts: string[] }> = []
  args.forEach((a, i) => {
    if (a !== '-v' && a !== '--volume') return
    const [src = '', dst = '', opts = ''] = (args[i + 1] ?? '').split(':')
    binds.push({ src, dst, opts: opts === '' ? [] : opts.split(',') })
  })
  return binds
}

function pxdHelpDefaults(): Record<string, string> {
  const help = execFileSync(process.execPath, [path.join(REPO_ROOT, 'bin', 'pxd'), '--help'], { encoding: 'utf8' })
  const defaults: Record<string, string> = {}
  for (const m of help.matchAll(/^\s+--([a-z-]+)\s.*\(default ([^)\s]+)\)/gm)) defaults[m[1]!] = m[2]!
  return defaults
}

// ---------------------------------------------------------------------------------------
// Default tests

test('every COPY source from the build context is tracked in git and let through by .dockerignore', (t) => {
  const { stages, rules, context } = facts()
  const tracked = gitTrackedFiles()
  const problems: string[] = []
  let checked = 0
  for (const stage of stages) {
    for (const copy of copiesOf(stage)) {
      if (copy.from !== undefined) continue
      for (const source of copy.sources) {
        checked++
        const src = path.posix.normalize(source).replace(/^\.?\/+/, '').replace(/\/+$/, '')
        const where = `COPY ${source} (line ${copy.line})`
        const glob = /[*?[]/.test(src) ? globRegex(src) : undefined
        const inRepo = glob ? tracked.filter((f) => glob.test(f)) : tracked.filter((f) => f === src || f.startsWith(src + '/'))
        if (!glob && !existsSync(path.join(REPO_ROOT, src))) {
          problems.push(`${where}: ${src} does not exist in the repository`)
          continue
        }
        if (inRepo.length === 0) {
          problems.push(`${where}: no file of ${src} is tracked in git, so a clean checkout cannot build the image`)
          continue
        }
        const top = glob ? undefined : excluded(rules, src)
        if (top?.excluded) problems.push(`${where}: .dockerignore leaves ${src} out of the build context (rule "${top.by}")`)
        const left = inRepo.filter((f) => !context.includes(f))
        if (left.length > 0 && !top?.excluded) {
          problems.push(`${where}: .dockerignore leaves out ${left.length} tracked file(s) under it: ${left.slice(0, 5).join(', ')}${left.length > 5 ? ', ...' : ''}`)
        }
      }
    }
  }
  t.true(checked > 0, 'the Dockerfile copies something from the build context')
  t.deepEqual(problems, [], problems.join('\n'))
  t.log(`${checked} COPY sources checked against ${context.length} files of the build context`)
})

test('every path the runtime stage copies from the build stage is copied in or made by the build', (t) => {
  const { stages, runtime, context } = facts()
  const problems: string[] = []
  const models = new Map<Stage, StageModel>()
  const fromCopies = copiesOf(runtime).filter((c) => c.from !== undefined)
  t.true(fromCopies.length > 0, 'the runtime stage copies from a build stage')
  for (const copy of fromCopies) {
    const stage = fromStage(stages, copy.from!)
    if (stage === undefined || stage === runtime) {
      problems.push(`COPY --from=${copy.from} (line ${copy.line}): no earlier stage of that name`)
      continue
    }
    let model = models.get(stage)
    if (model === undefined) {
      model = modelStage(stage, context, problems)
      models.set(stage, model)
      for (const step of model.steps) t.log(`stage ${stage.name ?? stage.index}: ${step}`)
    }
    for (const source of copy.sources) {
      const abs = path.posix.resolve(model.workdir, source)
      if (!model.files.has(abs)) problems.push(`COPY --from=${copy.from} ${source} (line ${copy.line}): the ${copy.from} stage neither copies it in nor makes it`)
    }
  }
  // What the runtime needs of the build stage: pxd's and pxctl's compiled entry points (as bin/
  // requires them), the addon (where src/native/binding.ts loads it) and package.json (read
  // for the version and to find the package root).
  const runtimeFiles = new StageFiles()
  const workdir = runtimeWorkdir(runtime)
  for (const copy of copiesOf(runtime)) {
    const dest = path.posix.resolve(workdir, copy.dest)
    for (const source of copy.sources) {
      if (copy.from === undefined) {
        for (const f of context.filter((c) => c === source || c.startsWith(source + '/'))) {
          runtimeFiles.files.add(f === source ? dest : path.posix.join(dest, f.slice(source.length + 1)))
        }
        continue
      }
      const stage = fromStage(stages, copy.from)
      const model = stage && models.get(stage)
      if (!model) continue
      const abs = path.posix.resolve(model.workdir, source)
      const destIsDir = copy.dest.endsWith('/') || copy.dest === '.' || copy.dest === './'
      if (model.files.trees.has(abs)) runtimeFiles.trees.add(dest)
      for (const f of model.files.files) {
        if (f === abs) runtimeFiles.files.add(destIsDir ? path.posix.join(dest, path.posix.basename(f)) : dest)
        else if (f.startsWith(abs + '/')) runtimeFiles.files.add(path.posix.join(dest, f.slice(abs.length + 1)))
      }
    }
  }
  const required = ['package.json', 'build/Release/pxd_native.node', 'bin/pxd', 'bin/pxctl', 'node_modules']
  for (const bin of ['pxd', 'pxctl']) {
    const text = readFileSync(path.join(REPO_ROOT, 'bin', bin), 'utf8')
    for (const m of text.matchAll(/require\('(\.\.\/[^']+)'\)/g)) required.push(path.posix.join('bin', m[1]!))
  }
  t.true(required.includes('dist/src/cli/pxd.js'), `bin/pxd requires dist/src/cli/pxd.js: ${required.join(', ')}`)
  for (const rel of required) {
    if (!runtimeFiles.has(path.posix.join(workdir, rel))) problems.push(`the runtime stage has no ${path.posix.join(workdir, rel)}`)
  }
  t.deepEqual(problems, [], problems.join('\n'))
})

test('the runtime stage installs the Debian packages pxd needs and one for each command it runs', (t) => {
  const { runtime } = facts()
  const installed = aptInstalled(runtime)
  const problems: string[] = []
  // What the daemon runs with (as opposed to what testing it takes): scripts/lib/host-layout.sh's
  // list, which scripts/setup.sh and the Debian package use too.
  const setup = readFileSync(path.join(REPO_ROOT, 'scripts', 'setup.sh'), 'utf8')
  const layout = readFileSync(path.join(REPO_ROOT, 'scripts', 'lib', 'host-layout.sh'), 'utf8')
  const runPkgs = /^run_packages=\(([^)]*)\)/m.exec(layout)?.[1]?.trim().split(/\s+/) ?? []
  t.true(runPkgs.length > 0, 'scripts/lib/host-layout.sh names run_packages')
  for (const p of runPkgs) if (!installed.includes(p)) problems.push(`scripts/lib/host-layout.sh run_packages has ${p}; the runtime stage does not install it`)
  // What building the addon takes is the build stage's, and only its.
  const buildPkgs = /^build_pkgs=\(([^)]*)\)/m.exec(setup)?.[1]?.trim().split(/\s+/) ?? []
  t.true(buildPkgs.length > 0, 'scripts/setup.sh names build_pkgs')
  const build = facts().stages[0]!
  const buildInstalled = aptInstalled(build)
  for (const p of buildPkgs) {
    if (!buildInstalled.includes(p)) problems.push(`scripts/setup.sh build_pkgs has ${p}; the build stage does not install it`)
    if (installed.includes(p)) problems.push(`the runtime stage installs ${p}, which only building the addon needs`)
  }
  // Every command pxd runs (run('cmd', ...) in src/). fusermount is not one: pxd mounts and
  // unmounts FUSE itself as root (fuse-native's instance unmount goes through libfuse).
  const commands = new Set<string>()
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith('.ts')) for (const m of readFileSync(p, 'utf8').matchAll(/\brun\('([a-z0-9._-]+)'/g)) commands.add(m[1]!)
    }
  }
  walk(path.join(REPO_ROOT, 'src'))
  // One dpkg -S for every place a command may live (usr-merged or not): "pkg: /path" lines.
  const dirs = ['/usr/sbin', '/usr/bin', '/sbin', '/bin']
  const owners = spawnSync('dpkg', ['-S', ...[...commands].flatMap((c) => dirs.map((d) => `${d}/${c}`))], { encoding: 'utf8' }).stdout
  for (const cmd of [...commands].sort()) {
    const pkg = owners.split('\n').map((l) => /^([^:\s]+)(?::[a-z0-9]+)?: (\S+)$/.exec(l)).find((m) => m && path.posix.basename(m[2]!) === cmd)?.[1]
    if (pkg === undefined) problems.push(`${cmd}: no Debian package on this machine provides it (run scripts/setup.sh test)`)
    else if (!installed.includes(pkg)) problems.push(`pxd runs ${cmd}, from Debian package ${pkg}, which the runtime stage does not install`)
    else t.log(`${cmd}: ${pkg}`)
  }
  t.deepEqual(problems, [], problems.join('\n'))
})

test('the documented docker run line (Dockerfile header and README) mounts what pxd uses by default', (t) => {
  const defaults = pxdHelpDefaults()
  for (const key of ['data-dir', 'run-dir', 'plugin-socket']) t.truthy(defaults[key], `pxd --help states a default for --${key}`)
  const lines = { Dockerfile: documentedRunLine(), README: readmeRunLine() }
  for (const [where, args] of Object.entries(lines)) {
    const binds = bindsOf(args)
    const bind = (dir: string) => binds.find((b) => b.src === dir && b.dst === dir)
    t.true(args.includes('--privileged'), `${where}: --privileged (FUSE, loop devices, mount)`)
    t.true(args.join(' ').includes('--network host'), `${where}: --network host (API on 127.0.0.1, peer port)`)
    t.truthy(bind('/dev'), `${where}: -v /dev:/dev (loop devices made after the container started)`)
    t.truthy(bind(defaults['data-dir']!), `${where}: -v ${defaults['data-dir']}:${defaults['data-dir']}`)
    t.truthy(bind(path.posix.dirname(defaults['plugin-socket']!)), `${where}: -v ${path.posix.dirname(defaults['plugin-socket']!)} (Docker finds the socket there)`)
    const run = bind(defaults['run-dir']!)
    t.truthy(run, `${where}: -v ${defaults['run-dir']}:${defaults['run-dir']}`)
    t.true(run?.opts.includes('rshared') ?? false, `${where}: ${defaults['run-dir']} with rshared propagation, so the host's Docker sees the mounts`)
  }
  t.deepEqual(lines.README, lines.Dockerfile.filter((a) => !['[pxd', 'flags]'].includes(a)), 'README and the Dockerfile header give the same docker run line')
  const caps = documentedCapabilityFlags()
  t.true(caps.includes('SYS_ADMIN'), `the flags instead of --privileged add CAP_SYS_ADMIN (mount): ${caps.join(' ')}`)
  const readme = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8').replace(/\s+/g, ' ')
  t.true(readme.includes(caps.map((a) => (a.includes(' ') ? `'${a}'` : a)).join(' ')), `README gives the same flags instead of --privileged: ${caps.join(' ')}`)
})

function runtimeWorkdir(stage: Stage): string {
  let wd = '/'
  for (const ins of stage.instructions) if (ins.keyword === 'WORKDIR') wd = path.posix.resolve(wd, ins.args)
  return wd
}

/** The production packages of package-lock.json at the top of node_modules (what npm prune --omit=dev keeps). */
function productionPackages(): string[] {
  const lock = readJson<{ packages: Record<string, { dev?: boolean; optional?: boolean }> }>(path.join(REPO_ROOT, 'package-lock.json'))
  return Object.entries(lock.packages)
    .filter(([key, info]) => /^node_modules\/(?:@[^/]+\/)?[^/]+$/.test(key) && info.dev !== true)
    .map(([key, info]) => ({ name: key.slice('node_modules/'.length), optional: info.optional === true }))
    .filter((p) => existsSync(path.join(REPO_ROOT, 'node_modules', p.name)) || !p.optional)
    .map((p) => p.name)
}

/**
 * The runtime stage's files, assembled under `root` from this repository's build: each COPY
 * from the build stage maps to the same path in the repository (the build stage runs the
 * repository's own build commands), each COPY from the context to the repository file.
 * node_modules holds links to the production packages only.
 */
function assembleRuntime(root: string): { workdir: string; entrypoint: string[] } {
  const { stages, runtime } = facts()
  let workdir = '/'
  for (const ins of runtime.instructions) {
    if (ins.keyword === 'WORKDIR') {
      workdir = path.posix.resolve(workdir, ins.args)
      mkdirSync(path.join(root, workdir), { recursive: true })
      continue
    }
    if (ins.keyword !== 'COPY') continue
    const copy = parseCopy(ins)
    const dest = path.posix.resolve(workdir, copy.dest)
    const destIsDir = copy.dest.endsWith('/') || copy.dest === '.' || copy.dest === './' || copy.sources.length > 1
    for (const source of copy.sources) {
      let repoPath: string
      if (copy.from === undefined) repoPath = path.join(REPO_ROOT, source)
      else {
        const stage = fromStage(stages, copy.from)
        if (stage === undefined) throw new Error(`COPY --from=${copy.from}: no such stage`)
        repoPath = path.join(REPO_ROOT, path.posix.relative(runtimeWorkdir(stage), path.posix.resolve(runtimeWorkdir(stage), source)))
      }
      if (!existsSync(repoPath)) throw new Error(`${path.relative(REPO_ROOT, repoPath)} is missing: build the project first (npm run build)`)
      const target = path.join(root, destIsDir ? path.posix.join(dest, path.basename(repoPath)) : dest)
      mkdirSync(path.dirname(target), { recursive: true })
      if (path.basename(repoPath) === 'node_modules' && copy.from !== undefined) {
        mkdirSync(target, { recursive: true })
        for (const name of productionPackages()) {
          mkdirSync(path.dirname(path.join(target, name)), { recursive: true })
          symlinkSync(path.join(REPO_ROOT, 'node_modules', name), path.join(target, name))
        }
      } else if (statSync(repoPath).isDirectory()) cpSync(repoPath, target, { recursive: true })
      else copyFileSync(repoPath, target)
    }
  }
  return { workdir, entrypoint: entrypointOf(runtime) }
}

function runIn(root: string, workdir: string, argv: string[]) {
  const [cmd, ...args] = argv.map((a) => (a.startsWith('/') && existsSync(path.join(root, a)) ? path.join(root, a) : a))
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('PXD_')) env[k] = v
  return spawnSync(cmd === 'node' ? process.execPath : cmd!, args, { cwd: path.join(root, workdir), env, encoding: 'utf8', timeout: 30_000 })
}

test('the entry point starts from exactly the files of the runtime stage: --help, --version, the addon, pxctl', (t) => {
  const root = mkdtempSync(path.join(tmpdir(), 'pxd-image-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  const { workdir, entrypoint } = assembleRuntime(root)
  t.log(`runtime files assembled under ${root}${workdir}; ENTRYPOINT ${JSON.stringify(entrypoint)}`)
  t.is(entrypoint[0], 'node', 'the entry point runs node directly (exec form), so pxd gets the signals')

  const help = runIn(root, workdir, [...entrypoint, '--help'])
  t.is(help.status, 0, `--help exits 0\nstdout: ${help.stdout}\nstderr: ${help.stderr}`)
  t.regex(help.stdout, /^pxd: storage node/, 'prints the usage')
  t.regex(help.stdout, /Usage: pxd \[options\]/)

  const pkg = readJson<{ version: string }>(path.join(REPO_ROOT, 'package.json'))
  const version = runIn(root, workdir, [...entrypoint, '--version'])
  t.is(version.stdout.trim(), pkg.version, `--version reads ${workdir}/package.json: ${version.stderr}`)

  // The addon is found from the package root and loads; crc32c("123456789") is the standard check value.
  const addon = runIn(root, workdir, ['node', '-e', "process.stdout.write(String(require('./dist/src/native/binding.js').native.crc32c(Buffer.from('123456789'))))"])
  t.is(addon.stdout, String(0xe3069283), `the addon loads in the image layout: ${addon.stderr}`)
  // fuse-native resolves from the production node_modules and finds its prebuilt binary.
  const fuse = runIn(root, workdir, ['node', '-e', "require(require.resolve('fuse-native', { paths: [process.cwd() + '/dist/src/frontend'] })); process.stdout.write('ok')"])
  t.is(fuse.stdout, 'ok', `fuse-native loads: ${fuse.stderr}`)

  const pxctl = runIn(root, workdir, ['node', path.posix.join(workdir, 'bin', 'pxctl'), '--help'])
  t.is(pxctl.status, 0, `pxctl --help: ${pxctl.stderr}`)
  t.regex(pxctl.stdout, /^pxctl: manage a pxd node/)
  if (process.env['PXD_TEST_DOCKER_BUILD'] !== '1') t.log('a real docker build of the image runs with PXD_TEST_DOCKER_BUILD=1 (see README "Development")')
})

// ---------------------------------------------------------------------------------------
// Opt-in: a real docker build and run, nothing pulled

if (process.env['PXD_TEST_DOCKER_BUILD'] === '1') registerDockerBuildTests()

function registerDockerBuildTests(): void {
  const CACHE = process.env['PXD_TEST_DOCKER_BUILD_CACHE'] ?? '/var/cache/pxd-test'
  const MIRROR = process.env['PXD_TEST_DEBIAN_MIRROR'] ?? 'http://deb.debian.org/debian'
  const IMAGE = 'pxd-image-test:latest'
  const BUSYBOX_IMAGE = 'pxd-test-busybox:latest'
  // What the official images hold that the build needs: g++/make/python3 for node-gyp (node:20-bookworm).
  const BASE_PACKAGES = ['ca-certificates', 'python3', 'make', 'g++']
  const LOCAL_CA_DIR = '/usr/local/share/ca-certificates'
  const state: { dir?: string; ns?: MountNamespace; engine?: DockerEngine; built?: boolean; container?: string | undefined } = {}

  test.serial('docker build (opt-in): local stand-ins for node:20-bookworm and node:20-bookworm-slim, nothing pulled', async (t) => {
    t.timeout(15 * 60_000)
    const missing: string[] = []
    if (process.getuid?.() !== 0) missing.push('root')
    for (const [cmd, pkg] of [[DOCKERD, 'docker.io'], [DOCKER_CLI, 'docker.io'], ['mmdebstrap', 'mmdebstrap'], ['unshare', 'util-linux'], ['nsenter', 'util-linux']] as const) {
      if (spawnSync('sh', ['-c', 'command -v "$1"', 'sh', cmd]).status !== 0) missing.push(`${cmd} (apt-get install ${pkg})`)
    }
    if (missing.length > 0) return t.fail(`PXD_TEST_DOCKER_BUILD=1 needs: ${missing.join(', ')}`)

    const nodeBin = realpathSync(process.execPath)
    const prefix = path.dirname(path.dirname(nodeBin))
    const npmDir = path.join(prefix, 'lib', 'node_modules', 'npm')
    const headers = path.join(prefix, 'include', 'node')
    for (const p of [npmDir, headers]) if (!existsSync(p)) return t.fail(`${p} is missing: the stand-in image copies this machine's Node, npm and Node headers`)
    // Everything from here runs in a private mount namespace: mmdebstrap's chroot mounts, then
    // dockerd. Whatever happens, those mounts go with the namespace, never onto the host.
    state.dir = mkdtempSync(path.join(tmpdir(), 'pxd-image-build-'))
    state.ns = await createMountNamespace()
    mkdirSync(CACHE, { recursive: true })
    const base = path.join(CACHE, `bookworm-node-${process.versions.node}.tar`)
    if (existsSync(base)) t.log(`base root file system from the cache: ${base}`)
    else {
      const started = Date.now()
      const partial = path.join(CACHE, `bookworm-node-${process.versions.node}.${process.pid}.partial.tar`)
      const r = await state.ns.run([
        'mmdebstrap', '--variant=minbase', '--format=tar', `--include=${BASE_PACKAGES.join(',')}`,
        '--customize-hook=mkdir -p "$1/usr/local/lib/node_modules" "$1/usr/local/include"',
        `--customize-hook=copy-in ${nodeBin} /usr/local/bin`,
        `--customize-hook=copy-in ${npmDir} /usr/local/lib/node_modules`,
        `--customize-hook=copy-in ${headers} /usr/local/include`,
        '--customize-hook=ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm"',
        '--customize-hook=ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"',
        'bookworm', partial, MIRROR,
      ], { timeoutMs: 12 * 60_000 })
      if (r.code !== 0) {
        rmSync(partial, { recursive: true, force: true })
        return t.fail(`mmdebstrap failed (it needs the Debian mirror ${MIRROR}):\n${describeResult(r).slice(-4000)}`)
      }
      renameSync(partial, base)
      t.log(`mmdebstrap made ${base} (${(statSync(base).size / 1024 ** 2).toFixed(0)} MiB) in ${((Date.now() - started) / 1000).toFixed(0)} s`)
    }

    // /run of our own, shared inside the namespace, so that -v /run/pxd:/run/pxd:rshared works
    // as on a systemd host; /run/docker/plugins holds only the socket of the pxd under test.
    await state.ns.mountTmpfs('/run')
    const shared = await state.ns.run(['mount', '--make-rshared', '/run'])
    if (shared.code !== 0) return t.fail(describeResult(shared))
    await state.ns.mountTmpfs('/run/docker/plugins')
    const engineLog = (line: string) => t.log(line.length > 2000 ? `${line.slice(0, 1000)}\n...\n${line.slice(-1000)}` : line)
    state.engine = await startDockerEngine({ dir: state.dir, commandPrefix: state.ns.prefix, storageDriver: 'overlay2', log: engineLog })
    const env = 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    await state.engine.dockerOk(['import', '--change', env, base, 'pxd-test-base:latest'], { timeoutMs: 5 * 60_000 })
    // The stand-in trusts what this machine trusts: a network that reaches registry.npmjs.org
    // through a TLS proxy has its CA in /usr/local/share/ca-certificates, and npm ci in the
    // build stage needs it too. (This is the test's network, not something the Dockerfile
    // should know about.)
    const extraCa = existsSync(LOCAL_CA_DIR) ? readdirSync(LOCAL_CA_DIR).filter((f) => f.endsWith('.crt')) : []
    if (extraCa.length > 0) {
      const ctx = path.join(state.dir, 'base-ca')
      mkdirSync(ctx)
      for (const f of extraCa) copyFileSync(path.join(LOCAL_CA_DIR, f), path.join(ctx, f))
      writeFileSync(path.join(ctx, 'Dockerfile'), [
        'FROM pxd-test-base:latest',
        'COPY *.crt /usr/local/share/ca-certificates/',
        'RUN update-ca-certificates',
        'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt',
        '',
      ].join('\n'))
      await state.engine.dockerOk(['build', '--network', 'none', '-t', 'node:20-bookworm', ctx], { timeoutMs: 2 * 60_000 })
      t.log(`the stand-in base trusts this machine's extra CA certificates: ${extraCa.join(', ')}`)
    } else await state.engine.dockerOk(['tag', 'pxd-test-base:latest', 'node:20-bookworm'])
    await state.engine.dockerOk(['tag', 'node:20-bookworm', 'node:20-bookworm-slim'])
    const v = await state.engine.dockerOk(['run', '--rm', '--network', 'none', 'node:20-bookworm', 'node', '--version'])
    t.is(v.trim(), process.version, 'the stand-in base runs this machine\'s Node')
  })

  test.serial('docker build (opt-in): the Dockerfile builds offline from the local base images', async (t) => {
    t.timeout(15 * 60_000)
    if (!state.engine) return t.fail('no Docker engine (the previous step failed)')
    const started = Date.now()
    // The legacy builder (DOCKER_BUILDKIT unset with docker.io 20.10) uses local images
    // without pulling; --network host lets npm ci and apt-get reach their registries.
    const r = await state.engine.docker(['build', '--network', 'host', '-t', IMAGE, REPO_ROOT], { timeoutMs: 14 * 60_000 })
    t.is(r.code, 0, `docker build failed:\n${(r.stdout + r.stderr).slice(-6000)}`)
    if (r.code !== 0) return
    state.built = true
    const size = Number(await state.engine.dockerOk(['image', 'inspect', IMAGE, '--format', '{{.Size}}']))
    t.log(`built in ${((Date.now() - started) / 1000).toFixed(0)} s; image ${(size / 1024 ** 2).toFixed(0)} MiB (on a stand-in base that also holds g++)`)
  })

  test.serial('docker run (opt-in): the image prints pxd usage and pxctl runs', async (t) => {
    if (!state.engine || !state.built) return t.fail('no image (a previous step failed)')
    const help = await state.engine.docker(['run', '--rm', '--network', 'none', IMAGE, '--help'])
    t.is(help.code, 0, describeResult(help))
    t.regex(help.stdout, /^pxd: storage node/)
    const pxctl = await state.engine.docker(['run', '--rm', '--network', 'none', '--entrypoint', 'pxctl', IMAGE, '--help'])
    t.is(pxctl.code, 0, describeResult(pxctl))
    t.regex(pxctl.stdout, /^pxctl: manage a pxd node/)
  })

  test.serial('docker run (opt-in): with the documented flags pxd serves a volume to another container', async (t) => {
    t.timeout(8 * 60_000)
    const { engine, ns, dir } = state
    if (!engine || !ns || !dir || !state.built) return t.fail('no image (a previous step failed)')
    await importBusyboxImage(engine, BUSYBOX_IMAGE, dir)
    // The documented line, with a temp data dir for /var/lib/pxd, this image, and a free API
    // port; once with --privileged, once with the documented capabilities instead.
    const documented = documentedRunLine()
    const base = documented.slice(documented.indexOf('run') + 1).filter((a) => !['[pxd', 'flags]'].includes(a))
    base.pop() // the image name
    const variants: Array<[string, string[]]> = [
      ['--privileged', base],
      ['capabilities', base.flatMap((a) => (a === '--privileged' ? documentedCapabilityFlags() : [a]))],
    ]
    const missing = missingCapabilities()
    if (missing.length > 0) {
      // runc cannot give a container capabilities the host itself lacks; a normal host has them all.
      t.log(`this machine's capability bounding set lacks ${missing.join(', ')}, so no --privileged container can start here; checking the documented capability flags only`)
      variants.shift()
    }
    for (const [variant, args] of variants) {
      const name = `pxd-${variant.replace(/^-+/, '')}`
      const dataDir = path.join(dir, `data-${name}`)
      mkdirSync(dataDir)
      const runArgs = args.map((a) => (a === '/var/lib/pxd:/var/lib/pxd' ? `${dataDir}:/var/lib/pxd` : a))
      runArgs[runArgs.indexOf('--name') + 1] = name
      t.true(runArgs.includes(`${dataDir}:/var/lib/pxd`), `the documented line binds /var/lib/pxd: ${documented.join(' ')}`)
      const port = await freePort()
      await engine.dockerOk(['run', ...runArgs, IMAGE, '--api-listen', `127.0.0.1:${port}`, '--node-id', 'image-test'])
      state.container = name
      const logs = async () => (await engine.docker(['logs', '--tail', '60', name])).stdout

      const deadline = Date.now() + 60_000
      let ready: { status: number; body: string } = { status: 0, body: '' }
      while (Date.now() < deadline) {
        ready = await httpGet(`http://127.0.0.1:${port}/readyz`).catch((err: Error) => ({ status: 0, body: err.message }))
        if (ready.status === 200) break
        await new Promise((resolve) => setTimeout(resolve, 500))
      }
      t.is(ready.status, 200, `${variant}: /readyz of pxd in the container: ${ready.body}\n--- docker logs ---\n${await logs()}`)
      if (ready.status !== 200) return

      const volume = `img-${randomBytes(3).toString('hex')}`
      const payload = randomBytes(12).toString('hex')
      t.is((await engine.dockerOk(['volume', 'create', '-d', 'pxd', '--opt', 'size=64M', '--opt', 'repl=1', volume])).trim(), volume)
      const out = await engine.dockerOk(['run', '--rm', '--network', 'none', '-v', `${volume}:/data`, BUSYBOX_IMAGE, 'sh', '-c', `echo ${payload} > /data/f && sync && cat /data/f && grep ' /data ' /proc/mounts`], { timeoutMs: 60_000 })
      t.true(out.includes(payload), `${variant}: the container wrote and read the volume:\n${out}`)
      t.regex(out, / \/data ext4 /, `${variant}: the container's /data is pxd's ext4, mounted by pxd inside its container and seen by Docker through /run/pxd (rshared)`)
      const inspected = JSON.parse(await engine.dockerOk(['exec', name, 'pxctl', '--api', `http://127.0.0.1:${port}`, '--json', 'volume', 'inspect', volume])) as { name: string; id: string; repl: number }
      t.is(inspected.name, volume)
      t.is(inspected.repl, 1)
      t.is((await engine.dockerOk(['volume', 'rm', volume])).trim(), volume)

      await engine.dockerOk(['stop', '-t', '60', name], { timeoutMs: 90_000 })
      const exit = (await engine.dockerOk(['inspect', name, '--format', '{{.State.ExitCode}}'])).trim()
      const tail = await logs()
      t.is(exit, '0', `${variant}: pxd exits 0 on docker stop:\n${tail}`)
      t.true(tail.includes('pxd stopped'), `${variant}: pxd logged that it stopped cleanly`)
      const left = ns.mounts().filter((m) => m.mountPoint.startsWith('/run/pxd/'))
      t.deepEqual(left.map((m) => `${m.mountPoint} (${m.fsType})`), [], `${variant}: nothing of pxd is left mounted under /run/pxd`)
      const loops = await ns.run(['losetup', '-a'])
      t.false(loops.stdout.includes(inspected.id), `${variant}: no loop device left on the volume's file:\n${loops.stdout}`)
      await engine.dockerOk(['rm', name])
      state.container = undefined
      t.log(`${variant}: pxd in the container served ${volume} to a busybox container and stopped cleanly`)
    }
  })

  test.after.always('docker build (opt-in): stop dockerd and the namespace, remove the temp dir', async (t) => {
    const { engine, ns, dir } = state
    if (engine && state.container) await engine.docker(['rm', '-f', state.container]).catch(() => undefined)
    if (engine) t.log(`dockerd: ${await engine.stop(30_000)}`)
    if (ns) await ns.close()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })
}

function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 5_000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('timeout', () => req.destroy(new Error('no answer within 5 s')))
    req.on('error', reject)
  })
}
