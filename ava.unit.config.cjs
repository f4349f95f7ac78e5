// Unit tests: one module at a time, safe to run in parallel worker processes.
module.exports = {
  files: ['dist/test/{api,native,store,engine,replicas,volumes,kvdb,plugin,replication,shares,cli,bench}/**/*.test.js'],
  timeout: '60s',
  workerThreads: false,
}
