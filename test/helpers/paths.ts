import path from 'node:path'

/** The repository root (tests run from dist/test/...). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..')
export const PXD_BIN = path.join(REPO_ROOT, 'bin', 'pxd')
export const PXCTL_BIN = path.join(REPO_ROOT, 'bin', 'pxctl')
