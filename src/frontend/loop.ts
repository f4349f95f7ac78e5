/** Loop devices over device files, through util-linux losetup. */
import { pxdError } from '../errors'
import { run } from '../util/exec'

export interface LoopDevice { device: string; backingFile: string }

/**
 * Direct I/O on the loop device: a buffered loop caches every block twice and sends
 * small requests; with direct I/O each bio reaches the FUSE file as one large request.
 */
export async function attachLoop(file: string, readOnly = false): Promise<string> {
  const { stdout } = await run('losetup', ['--find', '--show', '--direct-io=on', ...(readOnly ? ['--read-only'] : []), file])
  const device = stdout.trim()
  if (!device.startsWith('/dev/loop')) throw pxdError('COMMAND_FAILED', `losetup printed an unexpected device name "${device}"`)
  return device
}

/** The loop device takes its backing file's new size (it grew). */
export async function refreshLoopSize(device: string): Promise<void> {
  await run('losetup', ['--set-capacity', device])
}

export async function detachLoop(device: string): Promise<void> {
  await run('losetup', ['--detach', device])
}

export async function listLoops(): Promise<LoopDevice[]> {
  const { stdout } = await run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'])
  if (stdout.trim() === '') return []
  const parsed = JSON.parse(stdout) as { loopdevices?: Array<{ name: string; 'back-file': string | null }> }
  return (parsed.loopdevices ?? []).map((l) => ({ device: l.name, backingFile: (l['back-file'] ?? '').replace(/ \(deleted\)$/, '') }))
}
