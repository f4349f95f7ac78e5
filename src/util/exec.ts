import { execFile } from 'node:child_process'
import { pxdError } from '../errors'

export interface ExecResult { stdout: string; stderr: string }

const DEFAULT_TIMEOUT_MS = 120_000

/**
 * Run a system tool (losetup, mkfs, mount) without a shell. A non-zero exit becomes a
 * COMMAND_FAILED error whose message carries the command and its stderr, since that is
 * what an operator needs to see.
 */
export function run(cmd: string, args: readonly string[], options: { timeoutMs?: number; allowExitCodes?: number[] } = {}): Promise<ExecResult & { code: number }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) return resolve({ stdout, stderr, code: 0 })
      const code = typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1
      if (options.allowExitCodes?.includes(code)) return resolve({ stdout, stderr, code })
      const detail = (stderr || stdout || err.message).trim()
      reject(pxdError('COMMAND_FAILED', `${cmd} ${args.join(' ')} failed: ${detail}`, err))
    })
  })
}
