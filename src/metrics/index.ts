/** Metrics, health and readiness for operators; the pieces daemon.ts wires together. */
export { Metrics, VolumeIo, METRIC, PEER_LINK_STATES, type IoOp, type MetricsOptions, type MetricsProviders, type PeerLinkState, type PeerState, type ShareClientState, type VolumeState } from './metrics'
export { MeteredDevice, meteredDevices } from './instrument'
export { peerStates, type LinkView, type PeerStatesOptions } from './providers'
export {
  READINESS_CHECK_TIMEOUT_MS, nodeReadiness, nodeReadinessChecks, readinessOf,
  type CheckResult, type NodeReadinessOptions, type Readiness, type ReadinessChecks, type ReadinessReport,
} from './readiness'
export { LATENCY_BUCKETS, Latency } from './sampled'
