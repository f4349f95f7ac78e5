/**
 * A short randomized fault campaign (test/faults/campaign.ts): a few rounds of faults from
 * a fixed seed (PXD_CAMPAIGN_SEED overrides it), each healed, then every acknowledged
 * record checked on every replica. `npm run torture` runs long ones.
 */
import test from 'ava'
import { runCampaign } from '../faults/campaign'
import { assertIntegrationPreconditions } from '../helpers/preflight'

assertIntegrationPreconditions()

const SEED = Number(process.env['PXD_CAMPAIGN_SEED'] ?? 20261202)
const ROUNDS = Number(process.env['PXD_CAMPAIGN_ROUNDS'] ?? 4)

test(`a short fault campaign loses no acknowledged record (seed ${SEED}, ${ROUNDS} rounds)`, async (t) => {
  t.timeout(15 * 60_000)
  const result = await runCampaign({ rounds: ROUNDS, seed: SEED, log: (line) => t.log(line) })
  t.log(`faults: ${JSON.stringify(result.faults)}; acknowledged ${result.acknowledged}, verified ${result.recordsVerified}`)
  t.is(result.rounds, ROUNDS)
  t.true(result.acknowledged > 0, 'the workload wrote something')
  t.true(result.fioJobs > 0, 'some fio job completed')
  t.deepEqual(result.lost, [], `replay: PXD_CAMPAIGN_SEED=${SEED}`)
  t.is(result.scrubBad, 0)
  t.deepEqual(result.replicasDiffer, [])
})
