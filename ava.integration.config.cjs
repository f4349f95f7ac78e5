// Integration tests share loop devices, FUSE, ports and /run/docker/plugins:
// run their files one at a time and the tests inside each file serially.
module.exports = {
  files: ['dist/test/integration/**/*.test.js'],
  concurrency: 1,
  serial: true,
  timeout: '5m',
  workerThreads: false,
}
