/**
 * Flags for the node process that runs the daemon. They must be on node's command line
 * (V8 sizes the heap when the process starts; NODE_OPTIONS refuses this one), so every
 * launcher passes them: bin/pxd's shebang, scripts/start.sh, the Dockerfile's ENTRYPOINT
 * and the test harness (test/cli/node-flags.test.ts checks that they agree).
 *
 * --initial-old-space-size=128: every received peer write is a fresh 64 KiB-per-read,
 * 1 MiB-per-message allocation outside the JS heap. With V8's default start, the old
 * generation's limit sits just above its size, so those bytes trigger a full mark-compact
 * every ~30 ms (measured on a replica node during a repl=2 sequential write: 60-100 full
 * GCs in 4 s, and half the throughput); with a roomier start young collections free them
 * and full ones stop (1-2 in 4 s). It is a limit for scheduling GCs, not memory taken.
 */
export const DAEMON_NODE_FLAGS = ['--initial-old-space-size=128'] as const

/** The flags missing from this process's node command line. */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return DAEMON_NODE_FLAGS.filter((f) => !execArgv.includes(f))
}
