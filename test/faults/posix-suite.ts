/**
 * A POSIX behaviour suite to point at any directory: a volume's server-side ext4 mount, a
 * client node's FUSE mount of it, a plain ext4 for reference. Every check asserts what Linux
 * ext4 does, so all views of one volume must pass the same checks.
 *   node dist/test/faults/posix-suite.js DIR        (as root)
 * Works in a fresh subdirectory of DIR, removed at the end. Prints one JSON line per check,
 * {"check", "ok", "detail"}, then {"done": true, "passed", "failed"}; exits 0 only if all
 * passed. A check that takes longer than POSIX_SUITE_CHECK_TIMEOUT_MS (30 s) fails as hung.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { endAllChildren } from './cross-node'
import { ACCESS_CHECKS } from './posix-access-checks'
import { DATA_CHECKS } from './posix-checks'

const CHECKS = [...DATA_CHECKS, ...ACCESS_CHECKS]
const CHECK_TIMEOUT_MS = Number(process.env.POSIX_SUITE_CHECK_TIMEOUT_MS ?? 30_000)

interface Outcome {
  ok: boolean
  detail: string
}

/** The check's outcome, or a failure once timeoutMs passed (the check is then abandoned). */
async function withTimeout(name: string, run: () => Promise<string>, timeoutMs: number): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined
  const hung = new Promise<Outcome>((resolve) => {
    timer = setTimeout(() => resolve({ ok: false, detail: `${name} did not finish within ${timeoutMs} ms (hung)` }), timeoutMs)
  })
  const ran = run().then(
    (detail): Outcome => ({ ok: true, detail }),
    (err: unknown): Outcome => ({ ok: false, detail: err instanceof Error ? err.message : String(err) }),
  )
  try {
    return await Promise.race([ran, hung])
  } finally {
    clearTimeout(timer)
  }
}

function report(line: object): void {
  process.stdout.write(JSON.stringify(line) + '\n')
}

async function main(): Promise<number> {
  const dir = process.argv[2]
  if (dir === undefined || process.argv.length > 3) {
    process.stderr.write('usage: node dist/test/faults/posix-suite.js DIR\n')
    return 2
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('posix-suite: run as root (the checks chown, and switch to uid 1000)\n')
    return 2
  }
  process.umask(0o022)
  const runDir = await fs.mkdtemp(path.join(path.resolve(dir), 'posix-suite-'))
  await fs.chmod(runDir, 0o755)
  let passed = 0
  let failed = 0
  const record = (check: string, o: Outcome): void => {
    if (o.ok) passed++
    else failed++
    report({ check, ok: o.ok, detail: o.detail })
  }
  for (const check of CHECKS) {
    const checkDir = path.join(runDir, check.name)
    const o = await withTimeout(check.name, async () => {
      await fs.mkdir(checkDir)
      return check.run(checkDir)
    }, CHECK_TIMEOUT_MS)
    // Whatever a failed or hung check left running goes now, by pid.
    if (!o.ok) endAllChildren()
    record(check.name, o)
  }
  record('cleanup', await withTimeout('cleanup', async () => {
    await fs.rm(runDir, { recursive: true, force: true })
    const left = (await fs.readdir(dir)).filter((n) => n === path.basename(runDir))
    if (left.length > 0) throw new Error(`${runDir} is still listed after removing it`)
    return `removed ${runDir}`
  }, CHECK_TIMEOUT_MS))
  report({ done: true, passed, failed })
  return failed === 0 ? 0 : 1
}

process.on('exit', endAllChildren)
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130))

main().then(
  // Exit at once: a hung check may still hold a thread in a system call that never returns.
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`posix-suite: ${err instanceof Error ? err.stack : String(err)}\n`)
    process.exit(2)
  },
)
