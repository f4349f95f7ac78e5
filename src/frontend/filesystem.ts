/** File systems on loop devices: probe, mkfs on first use, grow, mount, unmount. */
import { constants as fsConstants, promises as fs, readFileSync } from 'node:fs'
import { pxdError } from '../errors'
import { run } from '../util/exec'

/** The file systems a volume can carry (its `fs` option). */
export const FILESYSTEMS = ['ext4', 'xfs'] as const
export type Filesystem = (typeof FILESYSTEMS)[number]

/** The file system type on a device, or undefined when it holds none. */
export async function probeFilesystem(device: string): Promise<string | undefined> {
  // blkid exits 2 when it finds nothing to report.
  const { stdout, code } = await run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', device], { allowExitCodes: [2] })
  const type = stdout.trim()
  return code === 0 && type !== '' ? type : undefined
}

/**
 * A new volume reads as zeros everywhere (unwritten blocks of a replica are zero), so
 * mkfs may skip zeroing inode tables, and must not discard. The journal is written out
 * all the same: replica files are sparse, and every first write to a journal block would
 * otherwise allocate in the replica file, making each fsync in the volume commit the
 * host file system's journal too (measured, repl=1, fio 4 KiB write+fsync: fsync p50
 * 4.1 ms with a sparse journal, 0.7 ms with a written one).
 */
export async function makeFilesystem(device: string, type: Filesystem, blockSize: number, label: string): Promise<void> {
  if (type === 'ext4') {
    await run('mkfs.ext4', ['-q', '-F', '-b', String(blockSize), '-L', label.slice(0, 16),
      '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=0', device])
  } else {
    await run('mkfs.xfs', ['-q', '-f', '-K', '-b', `size=${blockSize}`, '-L', label.slice(0, 12), device])
  }
}

export async function mountFilesystem(device: string, target: string, type: Filesystem, readOnly = false): Promise<void> {
  await fs.mkdir(target, { recursive: true, mode: 0o755 })
  // noinit_itable: the inode tables already read as zeros, so ext4 need not zero them.
  // Read-only (a snapshot): a journal left to replay is not replayed (nothing may write the
  // device), and an xfs may share its UUID with the volume it was taken of, mounted here too.
  const options = readOnly ? ['-o', type === 'ext4' ? 'ro,noload' : 'ro,norecovery,nouuid'] : type === 'ext4' ? ['-o', 'noinit_itable'] : []
  await run('mount', ['-t', type, ...options, device, target])
}

/** Freeze a mounted file system (writes wait; what it had is on its device) for the instant of a snapshot. */
export async function freezeFilesystem(target: string): Promise<void> {
  await run('fsfreeze', ['--freeze', target])
}

export async function thawFilesystem(target: string): Promise<void> {
  await run('fsfreeze', ['--unfreeze', target])
}

/**
 * Grow a mounted file system to its device's new size, online (resize2fs, xfs_growfs). A
 * mounted ext4 grows only for a process with CAP_SYS_RESOURCE (the kernel's rule): without
 * it this fails saying so, and growUnmounted does it at the next attach.
 */
export async function growFilesystem(device: string, target: string, type: Filesystem): Promise<void> {
  if (type === 'xfs') {
    await run('xfs_growfs', [target])
    return
  }
  if (!hasCapability(CAP_SYS_RESOURCE)) {
    throw pxdError('PRECONDITION', 'a mounted ext4 grows only for a process with CAP_SYS_RESOURCE, which pxd lacks here; it grows at its next mount')
  }
  await run('resize2fs', [device])
}

/**
 * Before mounting: an ext4 smaller than its device (the volume grew while it was not
 * mounted, or while the kernel would not let it grow) is checked and grown, offline. An xfs
 * grows only mounted: xfs_growfs after the mount does it.
 */
export async function growUnmounted(device: string, type: string, deviceBytes: number): Promise<boolean> {
  if (type !== 'ext4') return false
  const { stdout } = await run('dumpe2fs', ['-h', device])
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(stdout)?.[1] ?? NaN)
  const fsBytes = field('Block count') * field('Block size')
  if (!(fsBytes < deviceBytes - 1024 * 1024)) return false
  // resize2fs wants a file system checked since it was last mounted. e2fsck -p exits 1 when it fixed something.
  await run('e2fsck', ['-f', '-p', device], { allowExitCodes: [1] })
  await run('resize2fs', [device])
  return true
}

const CAP_SYS_RESOURCE = 24

/** Whether this process has a capability in its effective set. */
function hasCapability(bit: number): boolean {
  const line = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))
  return line !== null && ((BigInt(`0x${line[1]}`) >> BigInt(bit)) & 1n) === 1n
}

/** The readahead of the file system mounted at `mountpoint` (its backing device info), KiB. */
export async function setReadahead(mountpoint: string, kb: number): Promise<void> {
  const dev = (await fs.stat(mountpoint)).dev
  const major = Math.floor(dev / 256) & 0xfff
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00)
  await fs.writeFile(`/sys/class/bdi/${major}:${minor}/read_ahead_kb`, String(kb))
}

export async function unmountFilesystem(target: string, lazy = false): Promise<void> {
  await run('umount', lazy ? ['--lazy', target] : [target])
}

export interface MountEntry { source: string; target: string; fstype: string }

/** Mounts as this process sees them, with octal escapes in paths decoded. */
export async function listMounts(): Promise<MountEntry[]> {
  const text = await fs.readFile('/proc/self/mounts', 'utf8')
  const decode = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
  return text.split('\n').filter(Boolean).map((line) => {
    const [source = '', target = '', fstype = ''] = line.split(' ')
    return { source: decode(source), target: decode(target), fstype }
  })
}

/** Whether mkfs for a file system is installed (xfs is optional). */
export async function hasMkfs(type: Filesystem): Promise<boolean> {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin']
  for (const dir of dirs) {
    if (!dir) continue
    try {
      await fs.access(`${dir}/mkfs.${type}`, fsConstants.X_OK)
      return true
    } catch {
      // not in this directory
    }
  }
  return false
}
