import { spawn } from 'node:child_process'
import type { Logger } from 'pino'
import { pxdError } from '../errors'

/**
 * `pxctl node restart` without a service manager: this pxd's command line again (the code
 * on disk now, a new version if one was installed) with --takeover, detached, on the same
 * output; it asks for the handoff once it runs, and this process exits when it is done.
 */
export function spawnSuccessor(live: boolean, log: Logger): { pid: number } {
  if (process.env['NOTIFY_SOCKET']) throw pxdError('PRECONDITION', 'pxd runs under a service manager: restart it with `systemctl restart pxd` (every volume stays mounted)')
  if (!live) throw pxdError('PRECONDITION', 'a restart in place needs the addon\'s FUSE server (--fuse-server addon)')
  const args = [...process.execArgv, ...process.argv.slice(1).filter((a) => a !== '--takeover'), '--takeover']
  const child = spawn(process.execPath, args, { detached: true, stdio: 'inherit', env: process.env })
  child.unref()
  log.info({ pid: child.pid }, 'restarting in place: a successor takes over')
  return { pid: child.pid ?? 0 }
}

