/** Command-line flags of the scale bench (`npm run bench -- --scale [flags]`, bench/scale.ts). */
import { parseSize } from '../src/util/size'
import { size, UsageError } from './args'

export interface ScaleOptions {
  /** Volumes created and mounted on the one node. */
  volumes: number
  volumeSize: number
  /** The fio file in each volume written to, and each host file. */
  fileSize: number
  /** How many volumes (and host files) fio writes to at once, one job each. */
  jobs: number[]
  runtime: number
  ramp: number
  /** Interleaved rounds of every job count on host and pxd. */
  rounds: number
  /** Memory reads (1 s apart) behind each memory figure, the median kept. */
  settle: number
  quick: boolean
}

export const SCALE_USAGE = `usage: npm run bench -- --scale [flags]   (node dist/bench/scale.js [flags])

One pxd node (and etcd) on loopback with many mounted repl=1 volumes: the time of each mount,
pxd's resident memory per idle mounted volume, and aggregate 1 MiB seq write MB/s with one fio
job per volume on 1, 4 and 16 volumes at once against as many jobs on files in the data dir.

  --quick             a smoke run: --volumes 8 --jobs 1,4 --file 64M --runtime 3 --rounds 1
                      --settle 2 (later flags still override)
  --volumes N         volumes to create and mount               (default 32)
  --volume-size SIZE  each volume                               (default 512M)
  --file SIZE         the fio file in each volume / host file   (default 256M)
  --jobs LIST         volumes written at once, comma-separated  (default 1,4,16)
  --runtime SECONDS   measured seconds per fio run              (default 8)
  --ramp SECONDS      unmeasured warm-up per fio run            (default 1)
  --rounds N          interleaved rounds of host and pxd        (default 3)
  --settle N          memory reads, 1 s apart, per figure       (default 5)
  -h, --help          this text
`

const DEFAULTS: ScaleOptions = {
  volumes: 32, volumeSize: parseSize('512M'), fileSize: parseSize('256M'), jobs: [1, 4, 16],
  runtime: 8, ramp: 1, rounds: 3, settle: 5, quick: false,
}

const QUICK: Partial<ScaleOptions> = { volumes: 8, jobs: [1, 4], fileSize: parseSize('64M'), runtime: 3, rounds: 1, settle: 2 }

/** Parse argv (without node and script). Returns null for --help. */
export function parseScaleArgs(argv: string[]): ScaleOptions | null {
  const explicit: Partial<ScaleOptions> = {}
  let quick = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '-h' || arg === '--help') return null
    if (arg === '--quick') {
      quick = true
      continue
    }
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1
    const flag = eq > 0 ? arg.slice(0, eq) : arg
    const v = eq > 0 ? arg.slice(eq + 1) : argv[++i]
    if (v === undefined) throw new UsageError(`${flag} needs a value`)
    switch (flag) {
      case '--volumes': explicit.volumes = whole(flag, v, 1); break
      case '--volume-size': explicit.volumeSize = size(flag, v); break
      case '--file': explicit.fileSize = size(flag, v); break
      case '--jobs': explicit.jobs = v.split(',').map((j) => whole(flag, j, 1)); break
      case '--runtime': explicit.runtime = whole(flag, v, 1); break
      case '--ramp': explicit.ramp = whole(flag, v, 0); break
      case '--rounds': explicit.rounds = whole(flag, v, 1); break
      case '--settle': explicit.settle = whole(flag, v, 1); break
      default: throw new UsageError(`unknown flag ${arg}`)
    }
  }
  const o: ScaleOptions = { ...DEFAULTS, ...(quick ? QUICK : {}), ...explicit, quick }
  if (Math.max(...o.jobs) > o.volumes) throw new UsageError(`--jobs ${o.jobs.join(',')} asks for more volumes than --volumes ${o.volumes}`)
  // The file plus ext4's journal and metadata must fit.
  if (o.fileSize < parseSize('16M') || o.fileSize + parseSize('128M') > o.volumeSize) throw new UsageError('--file must be at least 16M and leave 128M of --volume-size for ext4')
  return o
}

function whole(flag: string, text: string, min: number): number {
  const n = Number(text)
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} wants a whole number >= ${min}, got "${text}"`)
  return n
}
