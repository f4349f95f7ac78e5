/** Types of the addon's shared-volume executor (native/share_server.h). */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface ShareServerBinding {}
