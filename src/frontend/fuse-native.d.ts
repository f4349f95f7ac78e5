// The parts of fuse-native (which ships no types) that pxd uses.
declare module 'fuse-native' {
  namespace Fuse {
  type Cb = (code: number, ...rest: unknown[]) => void
  interface Stat { mtime: Date; atime: Date; ctime: Date; size: number; mode: number; uid: number; gid: number; nlink?: number; blocks?: number; blksize?: number }
  interface Ops {
    init?(cb: (code: number) => void): void
    getattr?(path: string, cb: (code: number, stat?: Stat) => void): void
    readdir?(path: string, cb: (code: number, names?: string[], stats?: Stat[]) => void): void
    open?(path: string, flags: number, cb: (code: number, fd?: number) => void): void
    release?(path: string, fd: number, cb: (code: number) => void): void
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void
    flush?(path: string, fd: number, cb: (code: number) => void): void
    fsync?(path: string, datasync: number, fd: number, cb: (code: number) => void): void
    truncate?(path: string, size: number, cb: (code: number) => void): void
    ftruncate?(path: string, fd: number, size: number, cb: (code: number) => void): void
    statfs?(path: string, cb: Cb): void
  }
  interface Options {
    fsname?: string
    timeout?: number | false
    force?: boolean
    mkdir?: boolean
    debug?: boolean
    maxRead?: number
  }
  }
  class Fuse {
    constructor(mnt: string, ops: Fuse.Ops, opts?: Fuse.Options)
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    static unmount(mnt: string, cb: (err: Error | null) => void): void
    static ENOENT: number
  }
  export = Fuse
}
