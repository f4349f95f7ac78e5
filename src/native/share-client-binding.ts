/** Types of the addon's shared-volume FUSE client (native/share_client.h). */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface ShareClientBinding {}
