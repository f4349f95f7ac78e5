/**
 * Encryption at rest of a secure volume, on the coordinator: AES-256-XTS over 512-byte
 * units with the unit number as the tweak (dm-crypt's aes-xts-plain64), done by the addon
 * through Node's OpenSSL (native/xts.cc). A write is encrypted into a pooled buffer,
 * never in the caller's one, and that buffer goes back to the pool only once the write
 * settled everywhere (the engine's rule: a payload is not read after its write settles,
 * and neither is ours reused before). A read is decrypted in place once every replica
 * call of it (read repair included) is done, so replicas, peer frames, snapshots, scrub
 * and resync see only ciphertext and check checksums over it.
 *
 * A ciphertext unit of all zeros decrypts to zeros (unwritten and discarded regions).
 * The XTS call is synchronous: a 128 KiB request is tens of microseconds, the order of
 * the crc32c the data path already computes inline.
 */
import { pxdError, type PxdError } from '../errors'
import { native } from '../native/binding'

export const CIPHER_UNIT = 512
/** Buffers kept per size; sizes are powers of two, so a pool holds a few classes. */
const KEEP_PER_SIZE = 32

export class VolumeCipher {
  readonly #key: Buffer
  readonly #free = new Map<number, Buffer[]>()

  constructor(key: Uint8Array) {
    if (key.length !== 64) throw pxdError('INVALID_ARGUMENT', 'a volume data key is 64 bytes')
    this.#key = Buffer.from(key)
  }

  /** EINVAL (INVALID_ARGUMENT) for I/O not aligned to 512 bytes. */
  static check(offset: number, length: number): PxdError | undefined {
    if (offset % CIPHER_UNIT !== 0 || length % CIPHER_UNIT !== 0) {
      return pxdError('INVALID_ARGUMENT', `I/O on a secure volume must be aligned to ${CIPHER_UNIT} bytes (offset ${offset}, length ${length})`)
    }
    return undefined
  }

  /** The ciphertext of `data` at `offset`, in a pooled buffer: give it back with release() once the write settled. */
  encrypt(offset: number, data: Uint8Array): Buffer {
    const out = this.#take(data.length)
    native.xtsCrypt(this.#key, data, out, offset / CIPHER_UNIT, true)
    return out
  }

  /** Decrypt `buf` (read at `offset`) in place. */
  decrypt(offset: number, buf: Uint8Array): void {
    native.xtsCrypt(this.#key, buf, buf, offset / CIPHER_UNIT, false)
  }

  release(buf: Buffer): void {
    const size = buf.buffer.byteLength
    let list = this.#free.get(size)
    if (!list) this.#free.set(size, (list = []))
    if (list.length < KEEP_PER_SIZE) list.push(buf.length === size ? buf : Buffer.from(buf.buffer, 0, size))
  }

  /** Forget the key bytes (the engine closed). */
  destroy(): void {
    this.#key.fill(0)
    this.#free.clear()
  }

  #take(length: number): Buffer {
    let size = CIPHER_UNIT
    while (size < length) size *= 2
    const buf = this.#free.get(size)?.pop() ?? Buffer.allocUnsafeSlow(size)
    return buf.length === length ? buf : buf.subarray(0, length)
  }
}
