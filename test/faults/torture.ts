/**
 * A long fault campaign (campaign.ts) from the command line:
 *   npm run torture -- [--rounds N] [--seed S] [--fault-seconds F]
 * Prints every round and a summary; exits 1 if any acknowledged record was lost or wrong,
 * scrub found a bad block or the replicas differ. Needs root, FUSE, loop devices, network
 * namespaces and etcd (scripts/setup.sh test installs what is missing).
 */
import { parseArgs } from 'node:util'
import { newSeed, runCampaign } from './campaign'

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { rounds: { type: 'string' }, seed: { type: 'string' }, 'fault-seconds': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  })
  if (values.help) {
    process.stdout.write('usage: npm run torture -- [--rounds N (default 20)] [--seed S (default random)] [--fault-seconds F (default 6)]\n')
    return 0
  }
  const rounds = Number(values.rounds ?? 20)
  const seed = values.seed === undefined ? newSeed() : Number(values.seed)
  const faultSeconds = Number(values['fault-seconds'] ?? 6)
  if (!Number.isInteger(rounds) || rounds < 1 || !Number.isInteger(seed) || seed < 0 || !(faultSeconds > 0)) {
    process.stderr.write('torture: --rounds and --seed take whole numbers (rounds >= 1), --fault-seconds a positive number\n')
    return 2
  }
  const started = Date.now()
  const result = await runCampaign({ rounds, seed, faultSeconds, log: (line) => process.stdout.write(`${new Date().toISOString()} ${line}\n`) })
  const failed = result.lost.length > 0 || result.scrubBad > 0 || result.replicasDiffer.length > 0
  process.stdout.write([
    `seed ${seed}: ${result.rounds} rounds in ${((Date.now() - started) / 60_000).toFixed(1)} min`,
    `faults: ${Object.entries(result.faults).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `acknowledged records: ${result.acknowledged}; verified on every replica: ${result.recordsVerified}`,
    `fio jobs completed: ${result.fioJobs}; verified again on every replica: ${result.fioVerified}`,
    `lost or wrong: ${result.lost.reduce((n, l) => n + l.records.length, 0)}${result.lost.length ? ` ${JSON.stringify(result.lost)}` : ''}`,
    `scrub bad blocks: ${result.scrubBad}; replicas differing: ${result.replicasDiffer.length ? result.replicasDiffer.join(', ') : 'none'}`,
    failed ? `FAILED: replay with npm run torture -- --rounds ${rounds} --seed ${seed}` : 'ok',
  ].join('\n') + '\n')
  return failed ? 1 : 0
}

main().then((code) => process.exit(code), (err) => {
  process.stderr.write(`torture: ${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
