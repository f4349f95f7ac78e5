/** Commands run from tests in a child process, without blocking the test's event loop. */
import { execFile } from 'node:child_process'

export interface CommandResult {
  /** The exit code; 1 when the command could not start or its timeout killed it. */
  code: number
  stdout: string
  stderr: string
  /** stdout then stderr, for assertion messages. */
  out: string
}

/**
 * Runs `file` with `args` and resolves with its exit code and output; never rejects. The
 * event loop stays free meanwhile: a test process may serve the FUSE mount the command
 * uses, or a daemon's answer may depend on this process.
 */
export function runCommand(file: string, args: string[], timeoutMs: number): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(file, args, { encoding: 'utf8', timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1
      resolve({ code, stdout, stderr, out: stdout + stderr })
    })
  })
}

/** fio, with room for a verify pass over a few MiB on a loaded machine. */
export const runFio = (args: string[]): Promise<CommandResult> => runCommand('fio', args, 120_000)
