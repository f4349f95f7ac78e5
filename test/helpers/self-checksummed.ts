import { randomBytes } from 'node:crypto'
import { BLOCK_SIZE } from '../../src/constants'
import { native } from '../../src/native/binding'

/**
 * A block laid out as ext4 lays out its superblock with metadata_csum: 1024 bytes of zeros,
 * 1020 bytes of fields (random here) followed by their own crc32c (ext4's: no final
 * inversion, little-endian), then zeros. Any two such blocks have the same crc32c, since a
 * CRC over a message followed by its CRC is a constant: what tells them apart must not be
 * a CRC.
 */
export function selfChecksummedBlock(): Buffer {
  const block = Buffer.alloc(BLOCK_SIZE)
  const fields = randomBytes(1020)
  fields.copy(block, 1024)
  block.writeUInt32LE(~native.crc32c(fields) >>> 0, 2044)
  return block
}
