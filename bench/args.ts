/** Command-line flags of `npm run bench -- [flags]`. */
import { FUSE_SERVERS, type FuseServerKind } from '../src/frontend/device-directory'
import { formatSize, parseSize } from '../src/util/size'

export interface BenchOptions {
  /** Seconds each fio job measures (after the ramp). */
  runtime: number
  /** Seconds each fio job runs before it starts measuring. */
  ramp: number
  /** How many times the whole interleaved set of fio jobs runs; medians are over these. */
  repeat: number
  /** Size of the fio file on each target, bytes. */
  fileSize: number
  /** Size of each pxd volume, bytes. */
  volumeSize: number
  /** Runs of each crc32c / memcpy measurement (median reported). */
  crcRuns: number
  /** Only the in-process crc32c / memcpy figures: no cluster, no fio. */
  crcOnly: boolean
  quick: boolean
  /** Who serves the daemons' FUSE device directories (pxd --fuse-server). */
  fuseServer: FuseServerKind
  /** Peer links without their default TLS-PSK (PXD_PEER_PLAINTEXT=1), to measure what TLS costs. */
  peerPlaintext: boolean
  /** GlusterFS beside pxd: a one-brick and a replica-2 volume in the same rounds. */
  peers: boolean
}

export const USAGE = `usage: npm run bench -- [flags]

Runs the same fio jobs against a file on the host file system under pxd's data dir, a
file on a repl=1 volume and one on a repl=2 volume (2-node cluster on loopback with etcd),
interleaved and repeated; measures crc32c and memcpy throughput in process; prints a
Markdown table and writes bench/results/<timestamp>.json.

  --quick             a smoke run: --runtime 3 --ramp 1 --repeat 1 --size 256M
                      --volume-size 1G --crc-runs 3 (later flags still override)
  --runtime SECONDS   measured seconds per fio job            (default 8)
  --ramp SECONDS      unmeasured warm-up seconds per fio job  (default 1)
  --repeat N          rounds of all jobs on all targets       (default 3)
  --size SIZE         fio file size per target, K/M/G binary  (default 1G)
  --volume-size SIZE  size of each pxd volume                 (default 4G, at least 2 x --size)
  --crc-runs N        runs per crc32c / memcpy figure         (default 7)
  --crc-only          only the crc32c / memcpy figures (no cluster, no fio)
  --fuse-server NAME  pxd's FUSE server: addon or fuse-native (default addon)
  --peer-plaintext    peer links without their default TLS-PSK, to compare what TLS costs
  --peers             also every job on GlusterFS (a one-brick and a replica-2 volume on
                      this disk, FUSE client), interleaved; npm run bench installs
                      glusterfs-server/-client if missing
  -h, --help          this text

npm run bench -- --resync [flags] or --scale [flags] runs only that benchmark (see its --help).
`

export class UsageError extends Error {}

const DEFAULTS: Omit<BenchOptions, 'volumeSize'> & { volumeSize?: number } = {
  runtime: 8,
  ramp: 1,
  repeat: 3,
  fileSize: parseSize('1G'),
  crcRuns: 7,
  crcOnly: false,
  quick: false,
  fuseServer: 'addon',
  peerPlaintext: false,
  peers: false,
}

const QUICK: Partial<BenchOptions> = {
  runtime: 3,
  ramp: 1,
  repeat: 1,
  fileSize: parseSize('256M'),
  volumeSize: parseSize('1G'),
  crcRuns: 3,
}

/** Parse argv (without node and script). Returns null for --help. */
export function parseArgs(argv: string[]): BenchOptions | null {
  const explicit: Partial<BenchOptions> = {}
  let quick = false
  let crcOnly = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined]
    const value = (): string => {
      if (inline !== undefined) return inline
      const v = argv[++i]
      if (v === undefined) throw new UsageError(`${flag} needs a value`)
      return v
    }
    switch (flag) {
      case '-h':
      case '--help':
        return null
      case '--quick':
        quick = true
        break
      case '--crc-only':
        crcOnly = true
        break
      case '--peer-plaintext':
        explicit.peerPlaintext = true
        break
      case '--peers':
        explicit.peers = true
        break
      case '--runtime':
        explicit.runtime = positiveNumber(flag, value())
        break
      case '--ramp':
        explicit.ramp = nonNegativeNumber(flag, value())
        break
      case '--repeat':
        explicit.repeat = positiveInteger(flag, value())
        break
      case '--crc-runs':
        explicit.crcRuns = positiveInteger(flag, value())
        break
      case '--size':
        explicit.fileSize = size(flag, value())
        break
      case '--fuse-server': {
        const v = value()
        if (!(FUSE_SERVERS as readonly string[]).includes(v)) throw new UsageError(`--fuse-server wants ${FUSE_SERVERS.join(' or ')}, got "${v}"`)
        explicit.fuseServer = v as FuseServerKind
        break
      }
      case '--volume-size':
        explicit.volumeSize = size(flag, value())
        break
      default:
        throw new UsageError(`unknown flag ${arg}`)
    }
  }
  const merged = { ...DEFAULTS, ...(quick ? QUICK : {}), ...explicit }
  const volumeSize = merged.volumeSize ?? Math.max(parseSize('4G'), 2 * merged.fileSize)
  // The file plus ext4's own metadata and journal must fit, with room to spare.
  if (volumeSize < 2 * merged.fileSize) {
    throw new UsageError(`--volume-size ${formatSize(volumeSize)} is too small for --size ${formatSize(merged.fileSize)}: give at least twice the file size`)
  }
  if (merged.fileSize < parseSize('16M')) throw new UsageError('--size must be at least 16M')
  return { ...merged, volumeSize, quick, crcOnly }
}

function positiveNumber(flag: string, text: string): number {
  const n = Number(text)
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`${flag} wants a positive number, got "${text}"`)
  return n
}

function nonNegativeNumber(flag: string, text: string): number {
  const n = Number(text)
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`${flag} wants a number >= 0, got "${text}"`)
  return n
}

function positiveInteger(flag: string, text: string): number {
  const n = Number(text)
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag} wants a positive integer, got "${text}"`)
  return n
}

/** A size flag's value (K/M/G binary), or a UsageError naming the flag. */
export function size(flag: string, text: string): number {
  try {
    return parseSize(text)
  } catch (err) {
    throw new UsageError(`${flag}: ${(err as Error).message}`)
  }
}
