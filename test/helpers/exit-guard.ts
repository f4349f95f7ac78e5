/**
 * Processes a test started, stopped by pid if the test process exits without having
 * stopped them (an uncaught exception skips ava's after.always hooks). pxd gets SIGTERM,
 * so it unmounts and detaches what it attached even after the test process is gone.
 */
const live = new Map<number, NodeJS.Signals>()
let installed = false

export function guardProcess(pid: number, signal: NodeJS.Signals = 'SIGTERM'): void {
  live.set(pid, signal)
  if (installed) return
  installed = true
  process.on('exit', () => {
    for (const [p, sig] of live) {
      try {
        process.kill(p, sig)
      } catch {
        // already gone
      }
    }
  })
}

export function releaseProcess(pid: number): void {
  live.delete(pid)
}
