/**
 * Facts more than one layer relies on, each defined once. Tunables of one module stay in
 * that module as named constants; what is here is shared by the store, the engine, the
 * replica protocol and the API.
 */

/** A replica's unit of checksumming and of resync comparison: one crc32c and one hash per block. */
export const BLOCK_SIZE = 4096
/** Bytes of one block checksum (crc32c, little-endian) in a digest. */
export const CHECKSUM_BYTES = 4
/**
 * Bytes of one block hash (XXH3-64, little-endian): what replicas compare. Not the crc32c,
 * which is equal for any two blocks that end in their own crc32c (an ext4 superblock).
 */
export const HASH_BYTES = 8
/** Largest single read or write a replica serves, locally or over the peer link. */
export const MAX_IO_BYTES = 1024 * 1024

/** A volume id: 16 hex digits, made at create; it names the replica's directory on every node. */
export const VOLUME_ID_PATTERN = /^[0-9a-f]{16}$/
/** A node id: what --node-id accepts and what membership, attachments and peer frames carry. */
export const NODE_ID_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/

/** Background scrub pace when --scrub-rate is not given: bytes per second. */
export const DEFAULT_SCRUB_BYTES_PER_SECOND = 50 * 1024 * 1024
