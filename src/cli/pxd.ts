/**
 * `pxd`: the daemon. Flags override PXD_* environment variables, which override defaults.
 * Logs go to stdout through one pino root: JSON lines, or readable lines (pino-pretty)
 * when stdout is a terminal or with --log-pretty. pino-pretty runs as a synchronous stream
 * in this thread, not as a worker transport, so nothing logged before exit is lost.
 * SIGTERM/SIGINT stop it cleanly: volumes unmounted, loop devices detached, FUSE
 * unmounted, stores flushed. Two ways keep every volume mounted instead (a live restart,
 * src/restart/): `pxd --takeover` started beside the running one takes its FUSE session
 * over; under systemd with a file-descriptor store, SIGTERM of a `systemctl restart` leaves
 * the session in the store for the next start.
 */
import { parseArgs, promisify } from 'node:util'
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import pino, { type Logger } from 'pino'
import pretty from 'pino-pretty'
import { Daemon, notifyServiceManager, type DaemonConfig } from '../daemon'
import { messageOf } from '../errors'
import { FUSE_SERVERS, type FuseServerKind } from '../frontend/device-directory'
import { loadConfig } from './config-file'
import { boundBelowFlushLimit, DEFAULT_FUSE_REQUEST_TIMEOUT_SECONDS, kernelMaxRequestTimeout, parseFuseRequestTimeout } from './fuse-request-timeout'
import { missingNodeFlags } from './node-flags'
import { packageVersion } from './version'
import { DEFAULT_SCRUB_BYTES_PER_SECOND } from '../constants'
import { parseSize } from '../util/size'

const execFileAsync = promisify(execFile)

/** The default --scrub-rate, as the flag takes it. */
const DEFAULT_SCRUB_RATE = `${DEFAULT_SCRUB_BYTES_PER_SECOND / 1024 ** 2}M`

const HELP = `pxd: storage node for container hosts (Docker volume plugin "pxd")

Usage: pxd [options]

Options (each also settable through the environment variable shown):
  --data-dir DIR        replicas and metadata          PXD_DATA_DIR       (default /var/lib/pxd)
  --run-dir DIR         FUSE device dir and mounts     PXD_RUN_DIR        (default /run/pxd)
  --plugin-socket PATH  Docker plugin socket           PXD_PLUGIN_SOCKET  (default /run/docker/plugins/pxd.sock)
  --api-listen H:P      HTTP API for pxctl             PXD_API_LISTEN     (default 127.0.0.1:9001)
  --api-token-file FILE token for changing API calls PXD_API_TOKEN_FILE (default DATA_DIR/api-token,
                        (reads stay open)                                 made at first start, mode 0600)
  --scrub-interval SEC  background scrub of attached  PXD_SCRUB_INTERVAL (default 0: off)
                        volumes every SEC seconds
  --scrub-rate SIZE     scrub pace per second         PXD_SCRUB_RATE     (default ${DEFAULT_SCRUB_RATE})
  --resync-rate SIZE    what all resyncs run here      PXD_RESYNC_RATE    (default 200M)
                        copy per second
  --resync-concurrency N  resyncs run here at once     PXD_RESYNC_CONCURRENCY (default 2)
  --replace-after TIME  replace a replica whose node   PXD_REPLACE_AFTER  (default 10m; 0: never)
                        is offline this long (90, 30s,
                        10m, 1h)
  --node-id ID          this node's id                 PXD_NODE_ID        (default: the id stored in the data dir, else the host name)
  --fuse-server NAME    who serves the FUSE device    PXD_FUSE_SERVER    (default addon)
                        dir: addon (C++, async direct I/O, 1 MiB requests)
                        or fuse-native (libfuse 2: one 128 KiB request at a time)
  --fuse-request-timeout SEC  a FUSE request left    PXD_FUSE_REQUEST_TIMEOUT (default 180; 0: none)
                        unanswered this long (pxd died, no successor came) makes the kernel
                        fail I/O to every volume here instead of letting it wait (Linux 6.14)
  --log-level LEVEL     trace|debug|info|warn|error    PXD_LOG_LEVEL      (default info)
  --log-pretty          readable log lines, not JSON   PXD_LOG_PRETTY=1   (default: only when stdout
                                                       is a terminal; PXD_LOG_PRETTY=0 forces JSON)

Cluster (several nodes; without --kvdb pxd is a single node with an embedded store):
  --kvdb etcd://H:P[,H:P]      etcd endpoints          PXD_KVDB                 (https://H:P[,H:P]: over TLS)
  --kvdb-ca FILE               CA of etcd's cert (PEM) PXD_KVDB_CA              TLS to etcd (endpoints become https);
                                                                                without it the system's CAs
  --kvdb-cert FILE             client cert (PEM)       PXD_KVDB_CERT            for etcd's --client-cert-auth:
  --kvdb-key FILE              its private key (PEM)   PXD_KVDB_KEY             both or neither
  --kvdb-username NAME         etcd user               PXD_KVDB_USERNAME        etcd auth: both or neither; the
  --kvdb-password-file FILE    its password (1 line)   PXD_KVDB_PASSWORD_FILE   file must not be world-readable
  --cluster-id ID              cluster name in etcd    PXD_CLUSTER_ID           (default default)
  --peer-listen H:P            peer replication port   PXD_PEER_LISTEN
  --advertise H:P              address peers dial      PXD_ADVERTISE            (default: --peer-listen)
  --cluster-secret-file FILE   shared secret (>=16 B)  PXD_CLUSTER_SECRET_FILE
  --secrets-dir DIR            secure volumes'         PXD_SECRETS_DIR          (default /etc/pxd/secrets)
                               secret_key=NAME files
  --node-ttl SECONDS           lease; a node silent    PXD_NODE_TTL             (default 5)
                               this long is offline
  --peer-tls-cert FILE         node certificate (PEM)  PXD_PEER_TLS_CERT        mutual TLS for peer links:
  --peer-tls-key FILE          its private key (PEM)   PXD_PEER_TLS_KEY         all three or none; peers check
  --peer-tls-ca FILE           cluster CA (PEM)        PXD_PEER_TLS_CA          the CA chain and CN = node id
                               without them peer links run TLS 1.2 with a key derived from the cluster
                               secret (PSK); PXD_PEER_PLAINTEXT=1 turns that off, for benchmarks only
  --peer-accept-plaintext      rolling upgrade from a  PXD_PEER_ACCEPT_PLAINTEXT=1
                               release whose peer links had no TLS: plain links are accepted
                               and dialed too, beside TLS-PSK; drop it once every node is upgraded
  --takeover            take over from the pxd running PXD_TAKEOVER=1     a live restart or upgrade: every
                        on these dirs                                      volume stays mounted, I/O pauses
  --config FILE         settings file                  PXD_CONFIG         (default /etc/pxd/pxd.conf, when
                        ("data-dir = /srv/pxd" lines)                      it exists; flags and variables win)
  -h, --help            show this help
  -v, --version         print the version

pxd must run as root with /dev/fuse and loop devices available. Volumes are mounted at
<run-dir>/mounts/<volume>. Use pxctl to inspect and manage them.
`

const OPTIONS = {
  'data-dir': { type: 'string', env: 'PXD_DATA_DIR', default: '/var/lib/pxd' },
  'run-dir': { type: 'string', env: 'PXD_RUN_DIR', default: '/run/pxd' },
  'plugin-socket': { type: 'string', env: 'PXD_PLUGIN_SOCKET', default: '/run/docker/plugins/pxd.sock' },
  'api-listen': { type: 'string', env: 'PXD_API_LISTEN', default: '127.0.0.1:9001' },
  'api-token-file': { type: 'string', env: 'PXD_API_TOKEN_FILE', default: undefined },
  'scrub-interval': { type: 'string', env: 'PXD_SCRUB_INTERVAL', default: '0' },
  'scrub-rate': { type: 'string', env: 'PXD_SCRUB_RATE', default: DEFAULT_SCRUB_RATE },
  'resync-rate': { type: 'string', env: 'PXD_RESYNC_RATE', default: '200M' },
  'resync-concurrency': { type: 'string', env: 'PXD_RESYNC_CONCURRENCY', default: '2' },
  'replace-after': { type: 'string', env: 'PXD_REPLACE_AFTER', default: '10m' },
  'node-id': { type: 'string', env: 'PXD_NODE_ID', default: undefined },
  'fuse-server': { type: 'string', env: 'PXD_FUSE_SERVER', default: 'addon' },
  'fuse-request-timeout': { type: 'string', env: 'PXD_FUSE_REQUEST_TIMEOUT', default: String(DEFAULT_FUSE_REQUEST_TIMEOUT_SECONDS) },
  'log-level': { type: 'string', env: 'PXD_LOG_LEVEL', default: 'info' },
  kvdb: { type: 'string', env: 'PXD_KVDB', default: undefined },
  'kvdb-ca': { type: 'string', env: 'PXD_KVDB_CA', default: undefined },
  'kvdb-cert': { type: 'string', env: 'PXD_KVDB_CERT', default: undefined },
  'kvdb-key': { type: 'string', env: 'PXD_KVDB_KEY', default: undefined },
  'kvdb-username': { type: 'string', env: 'PXD_KVDB_USERNAME', default: undefined },
  'kvdb-password-file': { type: 'string', env: 'PXD_KVDB_PASSWORD_FILE', default: undefined },
  'cluster-id': { type: 'string', env: 'PXD_CLUSTER_ID', default: 'default' },
  'peer-listen': { type: 'string', env: 'PXD_PEER_LISTEN', default: undefined },
  advertise: { type: 'string', env: 'PXD_ADVERTISE', default: undefined },
  'cluster-secret-file': { type: 'string', env: 'PXD_CLUSTER_SECRET_FILE', default: undefined },
  'secrets-dir': { type: 'string', env: 'PXD_SECRETS_DIR', default: '/etc/pxd/secrets' },
  'node-ttl': { type: 'string', env: 'PXD_NODE_TTL', default: '5' },
  'peer-tls-cert': { type: 'string', env: 'PXD_PEER_TLS_CERT', default: undefined },
  'peer-tls-key': { type: 'string', env: 'PXD_PEER_TLS_KEY', default: undefined },
  'peer-tls-ca': { type: 'string', env: 'PXD_PEER_TLS_CA', default: undefined },
} as const

async function main(argv: string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        ...Object.fromEntries(Object.keys(OPTIONS).map((k) => [k, { type: 'string' as const }])),
        config: { type: 'string' },
        'log-pretty': { type: 'boolean' },
        takeover: { type: 'boolean' },
        'peer-accept-plaintext': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
      strict: true,
      allowPositionals: false,
    })
  } catch (err) {
    process.stderr.write(`pxd: ${messageOf(err)}\nRun "pxd --help" for usage.\n`)
    return 2
  }
  const values = parsed.values as Record<string, string | boolean | undefined>
  if (values.help) {
    process.stdout.write(HELP)
    return 0
  }
  if (values.version) {
    process.stdout.write(`${packageVersion()}\n`)
    return 0
  }
  let fromFile: Map<string, string>
  try {
    const file = typeof values.config === 'string' ? values.config : process.env.PXD_CONFIG
    fromFile = loadConfig(file, Object.fromEntries(Object.entries(OPTIONS).map(([k, o]) => [k, o.env])))
  } catch (err) {
    process.stderr.write(`pxd: ${messageOf(err)}\n`)
    return 2
  }
  const setting = (name: keyof typeof OPTIONS): string | undefined => {
    const o = OPTIONS[name]
    const v = values[name]
    return typeof v === 'string' ? v : (process.env[o.env] ?? fromFile.get(name) ?? o.default)
  }
  const level = setting('log-level')!
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal'].includes(level)) {
    process.stderr.write(`pxd: invalid log level "${level}"\n`)
    return 2
  }
  const prettyEnv = process.env.PXD_LOG_PRETTY
  if (prettyEnv !== undefined && !['', '0', '1', 'true', 'false'].includes(prettyEnv)) {
    process.stderr.write(`pxd: invalid PXD_LOG_PRETTY "${prettyEnv}": 1 or 0\n`)
    return 2
  }
  const plainEnv = process.env.PXD_PEER_PLAINTEXT
  if (plainEnv !== undefined && !['', '0', '1'].includes(plainEnv)) {
    process.stderr.write(`pxd: invalid PXD_PEER_PLAINTEXT "${plainEnv}": 1 or 0\n`)
    return 2
  }
  const logPretty = values['log-pretty'] === true
    || (prettyEnv === '1' || prettyEnv === 'true')
    || ((prettyEnv === undefined || prettyEnv === '') && process.stdout.isTTY === true)
  const log = rootLogger(level, logPretty)
  const nodeTtl = Number(setting('node-ttl'))
  if (!Number.isInteger(nodeTtl) || nodeTtl < 1 || nodeTtl > 300) {
    process.stderr.write(`pxd: invalid --node-ttl "${setting('node-ttl')}": whole seconds from 1 to 300\n`)
    return 2
  }
  const scrubInterval = Number(setting('scrub-interval'))
  let scrubRate: number
  try {
    scrubRate = parseSize(setting('scrub-rate')!)
  } catch {
    scrubRate = NaN
  }
  if (!Number.isInteger(scrubInterval) || scrubInterval < 0 || !(scrubRate > 0)) {
    process.stderr.write('pxd: --scrub-interval takes whole seconds (0: off) and --scrub-rate a size per second such as 50M\n')
    return 2
  }
  let resyncRate: number
  try {
    resyncRate = parseSize(setting('resync-rate')!)
  } catch {
    resyncRate = NaN
  }
  const resyncConcurrency = Number(setting('resync-concurrency'))
  if (!(resyncRate > 0) || !Number.isInteger(resyncConcurrency) || resyncConcurrency < 1 || resyncConcurrency > 64) {
    process.stderr.write('pxd: --resync-rate takes a size per second such as 200M, --resync-concurrency a whole number from 1 to 64\n')
    return 2
  }
  const replaceAfterMs = parseDuration(setting('replace-after')!)
  if (replaceAfterMs === undefined) {
    process.stderr.write(`pxd: invalid --replace-after "${setting('replace-after')}": seconds, or a number with s, m or h (0: never)\n`)
    return 2
  }
  const fuseServer = setting('fuse-server')!
  if (!(FUSE_SERVERS as readonly string[]).includes(fuseServer)) {
    process.stderr.write(`pxd: invalid --fuse-server "${fuseServer}": ${FUSE_SERVERS.join(' or ')}\n`)
    return 2
  }
  let fuseRequestTimeout: number
  try {
    fuseRequestTimeout = parseFuseRequestTimeout(setting('fuse-request-timeout')!, kernelMaxRequestTimeout())
  } catch (err) {
    process.stderr.write(`pxd: ${messageOf(err)}\n`)
    return 2
  }
  const optional = (name: keyof typeof OPTIONS, key: string) => {
    const v = setting(name)
    return v ? { [key]: v } : {}
  }
  const config: DaemonConfig = {
    dataDir: setting('data-dir')!,
    runDir: setting('run-dir')!,
    pluginSocket: setting('plugin-socket')!,
    apiListen: setting('api-listen')!,
    version: packageVersion(),
    clusterId: setting('cluster-id')!,
    nodeTtl,
    scrubInterval,
    scrubRate,
    resyncRate,
    resyncConcurrency,
    replaceAfterMs,
    fuseServer: fuseServer as FuseServerKind,
    fuseRequestTimeout,
    ...optional('node-id', 'nodeId'),
    ...optional('kvdb', 'kvdb'),
    ...optional('peer-listen', 'peerListen'),
    ...optional('advertise', 'advertise'),
    ...optional('cluster-secret-file', 'secretFile'),
    ...optional('secrets-dir', 'secretsDir'),
    ...optional('api-token-file', 'apiTokenFile'),
    kvdbSecurity: {
      ca: setting('kvdb-ca'), cert: setting('kvdb-cert'), key: setting('kvdb-key'),
      username: setting('kvdb-username'), passwordFile: setting('kvdb-password-file'),
    },
    peerTls: { cert: setting('peer-tls-cert'), key: setting('peer-tls-key'), ca: setting('peer-tls-ca') },
    peerPlaintext: plainEnv === '1',
    takeover: values.takeover === true || process.env['PXD_TAKEOVER'] === '1',
    peerAcceptPlaintext: values['peer-accept-plaintext'] === true || process.env['PXD_PEER_ACCEPT_PLAINTEXT'] === '1',
    // systemd (254 and later) says how many descriptors it keeps; PXD_FD_STORE=1 for older ones.
    fdStore: Boolean(process.env['NOTIFY_SOCKET']) && (Number(process.env['FDSTORE'] ?? 0) > 0 || process.env['PXD_FD_STORE'] === '1'),
  }

  const short = boundBelowFlushLimit(fuseRequestTimeout)
  if (short) log.warn({ fuseRequestTimeout }, short)
  const missing = missingNodeFlags()
  if (missing.length > 0) {
    log.warn({ missing }, `node was started without ${missing.join(' ')}: large replicated writes will cost frequent full GCs (start pxd through bin/pxd or scripts/start.sh)`)
  }
  const daemon = new Daemon(config, log)
  daemon.onHandedOff = (ok) => process.exit(ok ? 0 : 1)
  let signalled = false
  const stopOn = (signal: NodeJS.Signals) => {
    if (signalled) return log.warn({ signal }, 'already stopping')
    signalled = true
    notifyServiceManager('STOPPING=1', log)
    void (async () => {
      if (config.fdStore && signal === 'SIGTERM' && (await serviceRestarting(log))) {
        log.info({ signal }, 'the service is restarting: handing the FUSE session to the fd store, every volume stays mounted')
        await daemon.handOff('fd-store').catch(() => undefined)
        return
      }
      log.info({ signal }, 'stopping')
      await daemon.stop()
      process.exit(0)
    })()
  }
  process.on('SIGTERM', stopOn)
  process.on('SIGINT', stopOn)

  try {
    await daemon.start()
  } catch (err) {
    log.fatal({ err }, 'pxd failed to start')
    process.stderr.write(`pxd: ${messageOf(err)}\n`)
    await daemon.stop()
    return 1
  }
  notifyServiceManager(`READY=1\nMAINPID=${process.pid}\nSTATUS=serving volumes`, log)
  return -1
}

/**
 * Whether systemd is restarting this unit (a restart job runs for it) rather than stopping
 * it: only then does a stop leave the volumes mounted for the next start.
 */
async function serviceRestarting(log: Logger): Promise<boolean> {
  try {
    // The unit is named by this process's cgroup under systemd; pxd.service otherwise.
    const cgroup = await readFile('/proc/self/cgroup', 'utf8').catch(() => '')
    const unit = /([^/]+\.service)\s*$/m.exec(cgroup)?.[1] ?? 'pxd.service'
    const { stdout } = await execFileAsync('systemctl', ['list-jobs', '--no-legend', '--plain', unit], { timeout: 3_000 })
    return stdout.split('\n').some((line) => {
      const [, name, type] = line.trim().split(/\s+/)
      return name === unit && type !== undefined && type.includes('restart')
    })
  } catch (err) {
    log.warn({ err }, 'cannot tell whether systemd restarts pxd: stopping as usual')
    return false
  }
}

/** "90", "30s", "10m", "1h" as milliseconds; undefined when it is none of those. */
function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(s|m|h)?$/.exec(text.trim())
  if (!m) return undefined
  const unit = m[2] === 'h' ? 3_600_000 : m[2] === 'm' ? 60_000 : 1_000
  return Math.round(Number(m[1]) * unit)
}

function rootLogger(level: string, readable: boolean): Logger {
  const options = { level, base: { pid: process.pid } }
  if (!readable) return pino(options)
  return pino(options, pretty({
    destination: 1,
    sync: true,
    colorize: process.stdout.isTTY === true,
    translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l',
    ignore: 'pid,hostname',
  }))
}

main(process.argv.slice(2)).then((code) => {
  if (code >= 0) process.exit(code)
}, (err) => {
  process.stderr.write(`pxd: ${messageOf(err)}\n`)
  process.exit(1)
})
