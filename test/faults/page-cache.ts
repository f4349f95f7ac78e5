/**
 * A model of the page cache of one file, for the power-loss file system: every write since
 * the file's last fsync lives here, in 4 KiB pages, and only an fsync puts it on the
 * backing file. A power cut drops the pages (all of them, or a random subset, as write-back
 * might have flushed some). Reads see the cache over the backing file, as a process would.
 */
import { fdatasyncSync, fstatSync, ftruncateSync, readSync, writeSync } from 'node:fs'

export const PAGE = 4096

export class FileCache {
  /** Dirty pages by index; each is a whole page of what the file holds there now. */
  readonly pages = new Map<number, Buffer>()
  /** The file's size as processes see it. */
  size: number
  /** The lowest size a truncate set since the last sync: backing bytes past it read as zeros. */
  truncatedTo: number

  constructor(backingSize: number) {
    this.size = backingSize
    this.truncatedTo = backingSize
  }

  /** Bytes of the file from the cache, else the backing file (fd), else zeros. */
  read(fd: number, into: Buffer, pos: number): number {
    const end = Math.min(pos + into.length, this.size)
    if (end <= pos) return 0
    for (let at = pos; at < end;) {
      const index = Math.floor(at / PAGE)
      const inPage = at - index * PAGE
      const n = Math.min(PAGE - inPage, end - at)
      const page = this.pages.get(index)
      if (page) page.copy(into, at - pos, inPage, inPage + n)
      else this.#readBacking(fd, into.subarray(at - pos, at - pos + n), at)
      at += n
    }
    return end - pos
  }

  write(fd: number, data: Buffer, pos: number): void {
    const end = pos + data.length
    for (let at = pos; at < end;) {
      const index = Math.floor(at / PAGE)
      const inPage = at - index * PAGE
      const n = Math.min(PAGE - inPage, end - at)
      let page = this.pages.get(index)
      if (!page) {
        page = Buffer.alloc(PAGE)
        this.read(fd, page, index * PAGE)
        this.pages.set(index, page)
      }
      data.copy(page, inPage, at - pos, at - pos + n)
      at += n
    }
    if (end > this.size) this.size = end
  }

  truncate(size: number): void {
    if (size < this.size) {
      for (const index of [...this.pages.keys()]) {
        if (index * PAGE >= size) this.pages.delete(index)
        else if ((index + 1) * PAGE > size) this.pages.get(index)!.fill(0, size - index * PAGE)
      }
      if (size < this.truncatedTo) this.truncatedTo = size
    }
    this.size = size
  }

  /** fsync: the backing file becomes what processes see, durably. */
  sync(fd: number): void {
    if (this.truncatedTo < fstatSync(fd).size) ftruncateSync(fd, this.truncatedTo)
    ftruncateSync(fd, this.size)
    for (const [index, page] of [...this.pages].sort((a, b) => a[0] - b[0])) {
      const n = Math.min(PAGE, this.size - index * PAGE)
      if (n > 0) writeSync(fd, page, 0, n, index * PAGE)
    }
    fdatasyncSync(fd)
    this.pages.clear()
    this.truncatedTo = this.size
  }

  /**
   * A power cut: what write-back had flushed by chance survives. `keep(index)` decides for
   * each dirty page (a kept page past the end extends the file); returns the pages kept.
   */
  cut(fd: number, keep: (index: number) => boolean): number {
    let kept = 0
    for (const [index, page] of this.pages) {
      if (!keep(index)) continue
      const n = Math.min(PAGE, this.size - index * PAGE)
      if (n > 0) writeSync(fd, page, 0, n, index * PAGE)
      kept++
    }
    if (kept > 0) fdatasyncSync(fd)
    this.pages.clear()
    return kept
  }

  #readBacking(fd: number, into: Buffer, pos: number): void {
    into.fill(0)
    if (pos >= this.truncatedTo) return
    const want = Math.min(into.length, this.truncatedTo - pos)
    let done = 0
    while (done < want) {
      const n = readSync(fd, into, done, want - done, pos + done)
      if (n === 0) break
      done += n
    }
  }
}
