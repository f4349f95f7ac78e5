/**
 * Integration tests need root, /dev/fuse and loop devices. Where one is missing they
 * fail with a message saying what is missing; they never skip quietly.
 */
import { accessSync, constants, existsSync } from 'node:fs'
import { execFileSync } from 'node:child_process'

export function missingForIntegration(): string[] {
  const missing: string[] = []
  if (process.getuid?.() !== 0) missing.push('root (run the tests as root)')
  try {
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK)
  } catch {
    missing.push('/dev/fuse (load the fuse module)')
  }
  if (!existsSync('/dev/loop-control')) missing.push('/dev/loop-control (load the loop module)')
  // FUSE tools come from `fuse` (fusermount) or `fuse3` (fusermount3), whichever the host has.
  for (const tools of [['losetup'], ['mkfs.ext4'], ['blkid'], ['mount'], ['umount'], ['fusermount', 'fusermount3']]) {
    const found = tools.some((tool) => {
      try {
        execFileSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { stdio: 'ignore' })
        return true
      } catch {
        return false
      }
    })
    if (!found) missing.push(`${tools.join(' or ')} (run scripts/setup.sh)`)
  }
  try {
    execFileSync('sh', ['-c', 'ldconfig -p | grep -q libfuse.so.2'], { stdio: 'ignore' })
  } catch {
    missing.push('libfuse.so.2 (apt-get install libfuse2)')
  }
  return missing
}

export function assertIntegrationPreconditions(): void {
  const missing = missingForIntegration()
  if (missing.length > 0) throw new Error(`integration tests cannot run here; missing: ${missing.join(', ')}`)
}
