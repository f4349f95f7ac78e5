/**
 * Types of the addon's shared-volume FUSE client (native/share_client.h).
 *
 * The client mounts a FUSE file system whose every operation (but INIT and FORGET) becomes a
 * wire request (native/share_wire.h) in the addon's slot memory; JS carries it to the serving
 * node and hands the wire reply back, which the addon turns into the kernel's reply. JS never
 * parses either: it moves bytes. Nodeids are the client's own; the server knows files only by
 * their handles.
 */

declare const shareClientBrand: unique symbol

/** A mounted shared-volume client of the addon; opaque. */
export type ShareClientHandle = { readonly [shareClientBrand]: true }

/** What onEvent reports. */
export const enum ShareClientEvent {
  /** A wire request lies in the layout memory at [offset, offset + length), inside slot `slot`. */
  Request = 1,
  /** The kernel interrupted the request in `slot` (still pending; still answer it). offset/length as for its Request. */
  Interrupt = 2,
  /** The client stopped on its own (unmounted from outside, /dev/fuse failed): `length` is the errno or 0; slot is -1. */
  Stopped = 3,
}

/** The slot memory: slot i is [i * slotBytes, (i + 1) * slotBytes) of `memory`. */
export interface ShareClientLayout {
  memory: ArrayBuffer
  slots: number
  slotBytes: number
}

export interface ShareClientMountOptions {
  /** Shown in /proc/mounts as the source, e.g. "pxd:vol1" (no commas or blanks). */
  fsname: string
  /** Requests in flight, 2..256 (default 32). Each slot takes a little over 1 MiB of address space. */
  slots?: number
  /** How long the kernel caches entries and attributes (default 1000). 0 asks the server every time. */
  attrTimeoutMs?: number
}

export type ShareClientEventHandler = (event: ShareClientEvent, slot: number, offset: number, length: number) => void

export interface ShareClientStats {
  /** Wire requests handed to JS. */
  requests: number
  /** READ data given to the kernel. */
  bytesRead: number
  /** WRITE data the server acknowledged. */
  bytesWritten: number
  /** Nodeids known (handles the kernel holds), the root included. */
  nodes: number
}

/** A client's connection given up for a live restart (shareClientHandOff), for shareClientAdopt. */
export interface HandedShareClient {
  /** The /dev/fuse connection, still mounted; the caller owns it now. */
  fd: number
  /** The nodeid table: per node its nodeid, lookup count and the server's handle. */
  table: Uint8Array
  nextNodeid: number
  /** Requests still pending when it was given up: the successor answers them (shareClientAdopt's options.pending). */
  pending: Uint8Array
}

export interface ShareClientBinding {
  /**
   * Mounts a FUSE file system at `mountpoint` (existing dir) whose root is the wire handle `rootHandle`
   * (the bytes of one WireHandle incl. its padding, as a kOpRoot reply carries it) with attributes
   * `rootAttr` (a fuse_attr_out body, for the root's mode at mount; it must be a directory).
   * Mounted as root with allow_other and default_permissions: the client kernel checks permissions on
   * the attributes, and the server checks again with the caller's credentials.
   *
   * onEvent(event, slot, offset, length): Request: the wire request lies in `memory` at
   * [offset, offset+length) (absolute offset into the layout memory, inside slot `slot`'s area); answer
   * exactly once with shareClientReply or shareClientFail. The bytes stay valid until then. Interrupt:
   * the kernel interrupted the request in `slot` (still pending; JS may cancel it at the server; still
   * answer it). Stopped: the server stopped on its own (unmounted from outside, /dev/fuse error):
   * `length` carries the errno or 0; call shareClientUnmount to let go of it.
   *
   * Throws an Error with code (EINVAL for bad arguments, ENOENT, EPERM, EBUSY, EIO from the mount).
   */
  shareClientMount(
    mountpoint: string,
    rootHandle: Uint8Array,
    rootAttr: Uint8Array,
    options: ShareClientMountOptions,
    onEvent: ShareClientEventHandler,
  ): ShareClientHandle
  /**
   * A live restart: serve the connection `fd` (mounted at `mountpoint`) that a predecessor handed over,
   * with its nodeid table, as shareClientMount would. The client owns `fd` from here on (also when this
   * throws: then it is closed). Throws code EINVAL for a malformed table.
   */
  shareClientAdopt(
    fd: number,
    mountpoint: string,
    table: Uint8Array,
    nextNodeid: number,
    options: Omit<ShareClientMountOptions, 'fsname'> & { pending?: Uint8Array },
    onEvent: ShareClientEventHandler,
  ): ShareClientHandle
  /** The reader stops reading (the kernel queues new requests); what is pending is still answered as usual. */
  shareClientPause(handle: ShareClientHandle): void
  /**
   * After shareClientPause: gives the connection up, still mounted, with the nodeid table and the
   * requests still pending (never answered here: the successor gets them as Request events); the
   * handle is unmounted for JS from then on.
   */
  shareClientHandOff(handle: ShareClientHandle): HandedShareClient
  shareClientLayout(handle: ShareClientHandle): ShareClientLayout
  /**
   * Answer the request in `slot` with the server's wire reply (WireReply | handle | body). A malformed
   * reply (sizes past its end, more than one handle, a bad handle, an entry reply without one, an error
   * that is positive or -512 and below) answers the kernel -EIO. `reply` may lie in the slot's own memory;
   * it is used in place (READ data is not copied) and is free again when this returns. Ignored once
   * unmounted, and for a slot with nothing pending.
   */
  shareClientReply(handle: ShareClientHandle, slot: number, reply: Uint8Array): void
  /** Answer the request in `slot` with -errno (e.g. server unreachable: EIO, ENOTCONN). Ignored once unmounted. */
  shareClientFail(handle: ShareClientHandle, slot: number, errno: number): void
  /** The opcode of the request in `slot` (FUSE opcode; 0 if none is pending), so JS can tell idempotent ones from others. */
  shareClientOpcode(handle: ShareClientHandle, slot: number): number
  /** Unmount; without lazy throws code EBUSY while busy (and keeps serving). Idempotent. Pending requests are failed (ENOTCONN). */
  shareClientUnmount(handle: ShareClientHandle, lazy?: boolean): void
  /** Counters: { requests, bytesRead, bytesWritten, nodes (nodeids known) } */
  shareClientStats(handle: ShareClientHandle): ShareClientStats
}
