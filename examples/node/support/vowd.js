'use strict';
/**
 * The real vowd for the tests: started on a free port with the memory
 * store (or the embedded one, or on a given port, for restarts), its
 * stderr kept for failure messages. VOWD names the binary; by
 * default the debug build that `cargo build --workspace --bins` leaves in
 * target/debug/vowd (under CARGO_TARGET_DIR when set).
 */

const { spawn } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const VOWD = process.env.VOWD ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(REPO_ROOT, 'target'), 'debug', 'vowd');
// Generous for a loaded 2-core CI machine: it only turns a hang into a failure.
const START_TIMEOUT_MS = 20_000;

/**
 * Starts vowd with `args` after the store, the address and the metrics
 * endpoint; `announced` resolves with its address, `metricsAddress()` is
 * then the address of its /metrics. By default the memory store on a free
 * port; `dataDir` runs the embedded store there instead (tasks survive a
 * restart with the same dataDir), and `listen` takes a given address (a
 * predecessor's, for a restart).
 */
function startVowd(args = [], { listen = '127.0.0.1:0', dataDir } = {}) {
  const store = dataDir === undefined ? ['--store', 'memory'] : ['--store', 'embedded', '--data-dir', dataDir];
  const child = spawn(VOWD, [...store, '--listen', listen, '--metrics-listen', '127.0.0.1:0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  let metricsAddress;
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  const announced = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`vowd did not announce its address in ${START_TIMEOUT_MS} ms; stderr:\n${stderr}`)), START_TIMEOUT_MS);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${VOWD} (run \`cargo build --workspace --bins\` first): ${error.message}`));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`vowd exited early (${code ?? signal}); stderr:\n${stderr}`));
    });
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const metrics = /^vowd metrics on (\S+)$/.exec(line.trim());
      if (metrics) metricsAddress = metrics[1];
      const match = /^vowd listening on (\S+)$/.exec(line.trim());
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
  return { child, announced, stderr: () => stderr, metricsAddress: () => metricsAddress };
}

/**
 * The sum of the series in vowd's /metrics at `metricsAddress` that `series`
 * names (0 when there is none): a metric's name (vow_live_waiters), or the
 * start of a series with its first labels (vow_rpc_requests_total{method="Get").
 */
async function metric(metricsAddress, series) {
  const response = await fetch(`http://${metricsAddress}/metrics`);
  const text = await response.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 2 || line.startsWith('#')) continue;
    const [name] = fields;
    if (name === series || name.startsWith(`${series}{`) || (series.includes('{') && name.startsWith(series))) {
      sum += Number(fields.at(-1));
    }
  }
  return sum;
}

/** Sends `signal` and resolves with the exit code (or signal name), SIGKILL after `boundMs`. */
async function stopProcess(child, signal, boundMs) {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode;
  const exited = new Promise((resolve) => child.once('exit', (code, name) => resolve(code ?? name)));
  child.kill(signal);
  let timer;
  const code = await Promise.race([
    exited,
    new Promise((resolve) => {
      timer = setTimeout(() => resolve('timeout'), boundMs);
    }),
  ]);
  clearTimeout(timer);
  if (code === 'timeout') child.kill('SIGKILL');
  return code;
}

module.exports = { REPO_ROOT, VOWD, metric, startVowd, stopProcess };
