/** Peer transport: frames, handshake, the server end and the link pool. No replication policy. */
export { PeerServer, type PeerServerOptions, type RequestHandler } from './peer-server'
export { PeerLink, type LinkState, type RequestOptions } from './peer-link'
export { PeerLinks, type PeerLinksOptions } from './peer-links'
export { RefusalLog, type RefusalKind } from './admission'
export { isReplicationError, replicationError, type ReplicationCode } from './errors'
export {
  MAX_DATA_BYTES, MAX_FRAME_BYTES, MAX_FSOP_BYTES, PEER_PATH, PROTOCOL_VERSION, REQUEST_TYPES, decodeFrame, encodeFrame, encodeFrameParts, isRequest, payloadBytes, sendFrame,
  type Frame, type FrameType, type OutgoingRequest, type RequestFrame, type RequestType,
} from './frames'
export { loadPeerTls, checkPeerTls, type PeerTls, type PeerTlsFiles } from './tls'
