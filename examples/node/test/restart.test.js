'use strict';
/**
 * Riding through a rolling restart, from Node: the real vowd stopped with
 * SIGTERM (it drains: open Awaits and Watches end UNAVAILABLE, reason
 * SHUTTING_DOWN) and a successor started on the same address with the same
 * embedded store, while ../client.js and ../worker.js retry. Every wait is
 * a bounded wait on a condition.
 */

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, test } = require('node:test');

const { VowClient, fromPayload, grpc, waitForReadyOf } = require('../client');
const { reasonOf, retryInfoAny } = require('../error_details');
const { Backoff, RETRY_ATTEMPTS, mayRepeat } = require('../retry');
const { createWorker } = require('../worker');
const { REPO_ROOT, metric, startVowd, stopProcess } = require('../support/vowd');

// Generous bounds for a loaded 2-core CI machine; each only turns a hang into a failure.
const TEST_TIMEOUT_MS = 30_000;
const WAIT_MS = 10_000;
const STOP_TIMEOUT_MS = 10_000; // the drain here is 100 ms
const SERVICE_CONFIG = fs.readFileSync(path.join(REPO_ROOT, 'deploy', 'grpc-service-config.json'), 'utf8');
// grpc-js waits 1 s, then longer, before reconnecting to a vowd that went away.
const QUICK_RECONNECT = { 'grpc.initial_reconnect_backoff_ms': 50, 'grpc.max_reconnect_backoff_ms': 250 };

const running = new Set();
const clients = new Set();

after(async () => {
  for (const client of clients) client.close();
  await Promise.all([...running].map(({ child }) => stopProcess(child, 'SIGKILL', STOP_TIMEOUT_MS)));
});

/** Starts vowd with a short drain, kept until it is stopped or the file ends. */
async function start(args = [], options = {}) {
  const vowd = startVowd(['--drain-timeout', '100ms', '--lease-duration', '3s', ...args], options);
  running.add(vowd);
  vowd.address = await vowd.announced;
  return vowd;
}

/** SIGTERM, as an orchestrator stopping a replica does; a clean drain exits 0. */
async function terminate(vowd) {
  const code = await stopProcess(vowd.child, 'SIGTERM', STOP_TIMEOUT_MS);
  running.delete(vowd);
  assert.equal(code, 0, `vowd did not exit 0 after SIGTERM; stderr:\n${vowd.stderr()}`);
}

async function connect(address, options = {}) {
  const vow = await VowClient.connect(address, { ...options, channelOptions: QUICK_RECONNECT });
  clients.add(vow);
  return vow;
}

function dataDir() {
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vow-node-restart-')), 'data');
}

/** Polls `condition` every 10 ms until it holds; fails after `boundMs`. */
async function eventually(condition, what, boundMs = WAIT_MS) {
  const started = Date.now();
  while (!(await condition())) {
    assert.ok(Date.now() - started < boundMs, `timed out after ${boundMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('an Await that a draining vowd ends SHUTTING_DOWN completes at the vowd that takes over', { timeout: TEST_TIMEOUT_MS }, async () => {
  const data = dataDir();
  const first = await start([], { dataDir: data });
  const vow = await connect(first.address);
  // Running when vowd stops: the drain hands the attempt back, the successor runs it again.
  const task = await vow.submit('sleep', { ms: 800 });

  const retrying = vow.await(task.id, { timeoutMs: WAIT_MS });
  // The bare stub, without the client's retries: what the drain answers.
  const bare = new Promise((resolve) => {
    vow.stub.Await({ id: task.id }, { deadline: new Date(Date.now() + WAIT_MS) }, (error) => resolve(error));
  });
  await eventually(async () => (await metric(first.metricsAddress(), 'vow_live_waiters')) >= 2, 'both Awaits to wait at vowd');

  await terminate(first);
  const error = await bare;
  assert.equal(error?.code, grpc.status.UNAVAILABLE, `the bare Await ended with ${error?.code} ${error?.details}`);
  assert.equal(reasonOf(error), 'SHUTTING_DOWN');
  await start([], { dataDir: data, listen: first.address });

  const { done, task: finished } = await retrying;
  assert.equal(done, true);
  assert.equal(finished.state, 'TASK_STATE_SUCCEEDED', JSON.stringify(finished.error));
});

test('a watch resumes across a restart without a repeated or missing revision', { timeout: TEST_TIMEOUT_MS }, async () => {
  const data = dataDir();
  const kinds = ['--remote-kind', 'node-restart'];
  const first = await start(kinds, { dataDir: data });
  const vow = await connect(first.address);
  // A remote kind with no worker yet: QUEUED and unchanged until it is leased at the successor.
  const task = await vow.submit('node-restart', { n: 1 });

  const watch = vow.watch(task.id, { timeoutMs: WAIT_MS });
  const events = [];
  let snapshotSeen;
  const snapshot = new Promise((resolve) => {
    snapshotSeen = resolve;
  });
  const watched = (async () => {
    for await (const event of watch) {
      events.push(event);
      snapshotSeen();
    }
  })();
  await snapshot;

  await terminate(first);
  const second = await start(kinds, { dataDir: data, listen: first.address });
  await eventually(async () => (await metric(second.metricsAddress(), 'vow_live_watchers')) >= 1, 'the watch to resume at the successor');

  const worker = createWorker({ target: second.address, handlers: { 'node-restart': async () => ({ done: true }) }, workerId: 'node-restart' });
  const stopped = worker.run();
  await watched;
  await worker.stop();
  await stopped;

  assert.equal((await watch.status).code, grpc.status.OK);
  const types = events.map((event) => event.type);
  assert.equal(types[0], 'WATCH_EVENT_TYPE_SNAPSHOT');
  assert.ok(types.slice(1).every((type) => type === 'WATCH_EVENT_TYPE_CHANGE'), `only changes after the snapshot: ${types}`);
  const revisions = events.map((event) => Number(event.task.revision));
  for (let i = 1; i < revisions.length; i++) assert.equal(revisions[i], revisions[i - 1] + 1, `revisions ${revisions}`);
  assert.equal(events.at(-1).task.state, 'TASK_STATE_SUCCEEDED');
});

test('a worker rides through a restart: its attempt completes at the successor, and it polls there', { timeout: TEST_TIMEOUT_MS }, async () => {
  const data = dataDir();
  const kinds = ['--remote-kind', 'node-restart-worker'];
  const first = await start(kinds, { dataDir: data });
  const vow = await connect(first.address);
  let release;
  const released = new Promise((resolve) => {
    release = resolve;
  });
  let started;
  const handlerStarted = new Promise((resolve) => {
    started = resolve;
  });
  const worker = createWorker({
    target: first.address,
    workerId: 'node-restart-worker',
    channelOptions: QUICK_RECONNECT,
    handlers: {
      async 'node-restart-worker'({ input }) {
        if (input.hold) {
          started();
          await released;
        }
        return { greeting: `hello, ${input.name}` };
      },
    },
  });
  const stopped = worker.run();

  const held = await vow.submit('node-restart-worker', { name: 'held', hold: true });
  await handlerStarted;
  await terminate(first);
  await start(kinds, { dataDir: data, listen: first.address });
  release();

  const { task: finished } = await vow.await(held.id, { timeoutMs: WAIT_MS });
  assert.equal(finished.state, 'TASK_STATE_SUCCEEDED', JSON.stringify(finished.error));
  assert.equal(finished.attempt, 1, 'the attempt across the restart, not a second one');
  const later = await vow.submit('node-restart-worker', { name: 'later' });
  const { task: laterFinished } = await vow.await(later.id, { timeoutMs: WAIT_MS });
  assert.deepEqual(fromPayload(laterFinished.output), { greeting: 'hello, later' });
  await worker.stop();
  await stopped;
});

test('NOT_FOUND and INVALID_ARGUMENT reach the caller after one call', { timeout: TEST_TIMEOUT_MS }, async () => {
  const vowd = await start();
  const vow = await connect(vowd.address);

  await assert.rejects(vow.get('0123456789abcdef0123456789abcdef'), { code: grpc.status.NOT_FOUND });
  await assert.rejects(vow.submit('no-such-kind', {}), { code: grpc.status.INVALID_ARGUMENT });
  for (const method of ['Get', 'Submit']) {
    assert.equal(await metric(vowd.metricsAddress(), `vow_rpc_requests_total{method="${method}"`), 1, `${method} calls answered`);
  }
});

test('with the shipped service config, a call made while vowd is away waits for it (waitForReady)', { timeout: TEST_TIMEOUT_MS }, async () => {
  const first = await start();
  const vow = await connect(first.address, { serviceConfig: SERVICE_CONFIG });
  await terminate(first);
  const channel = vow.stub.getChannel();
  await eventually(
    () => channel.getConnectivityState(true) === grpc.connectivityState.TRANSIENT_FAILURE,
    'the channel to fail to connect',
  );

  // The bare stub, with the client's metadata (waitForReady) but none of its retries.
  const answered = new Promise((resolve) => {
    const deadline = new Date(Date.now() + WAIT_MS);
    vow.stub.Get({ id: '0123456789abcdef0123456789abcdef' }, vow.metadataFor('Get'), { deadline }, (error) => resolve(error));
  });
  await start([], { listen: first.address });
  assert.equal((await answered)?.code, grpc.status.NOT_FOUND, 'the answer of the vowd that came back');
});

test('the service config marks every TaskService method waitForReady', () => {
  const waitForReady = waitForReadyOf(SERVICE_CONFIG, 'vow.v1.TaskService');
  for (const method of ['Get', 'Await', 'Watch', 'Submit', 'Run']) assert.equal(waitForReady(method), true, method);
  const specific = JSON.stringify({ methodConfig: [{ name: [{ service: 's', method: 'A' }] }, { name: [{ service: 's' }], waitForReady: true }] });
  assert.equal(waitForReadyOf(specific, 's')('A'), false, 'the entry naming the method wins');
  assert.equal(waitForReadyOf(specific, 's')('B'), true);
  assert.equal(waitForReadyOf(specific, 'other')('B'), false);
});

test('what is retried: transient codes for safe calls, UNAVAILABLE only for Run, never a caller cancel', () => {
  const { status } = grpc;
  for (const code of [status.UNAVAILABLE, status.CANCELLED, status.INTERNAL, status.UNKNOWN]) {
    assert.equal(mayRepeat({ code }, { safe: true }), true, `safe call, code ${code}`);
  }
  assert.equal(mayRepeat({ code: status.UNAVAILABLE }, { safe: false }), true);
  for (const code of [status.CANCELLED, status.INTERNAL, status.UNKNOWN]) assert.equal(mayRepeat({ code }, { safe: false }), false);
  for (const code of [status.NOT_FOUND, status.INVALID_ARGUMENT, status.DEADLINE_EXCEEDED, status.FAILED_PRECONDITION]) {
    assert.equal(mayRepeat({ code }, { safe: true }), false, `code ${code}`);
  }
  assert.equal(mayRepeat({ code: status.CANCELLED }, { safe: true, cancelledByCaller: true }), false);
});

test('the backoff: bounded attempts, full jitter, RetryInfo, never past the deadline', () => {
  const unavailable = { code: grpc.status.UNAVAILABLE };
  const backoff = new Backoff(undefined);
  const pauses = [];
  for (let pause; (pause = backoff.pauseAfter(unavailable, { safe: true })) !== null; ) pauses.push(pause);
  assert.equal(pauses.length, RETRY_ATTEMPTS - 1);
  pauses.forEach((pause, i) => assert.ok(pause >= 0 && pause <= Math.min(100 * 2 ** i, 2_000), `pause ${i}: ${pause}`));

  const metadata = new grpc.Metadata();
  const { type_url: typeUrl, value } = retryInfoAny(1_500);
  metadata.set('grpc-status-details-bin', encodeStatus(grpc.status.UNAVAILABLE, typeUrl, value));
  assert.equal(new Backoff(undefined).pauseAfter({ code: grpc.status.UNAVAILABLE, metadata }, { safe: true }), 1_500);
  assert.equal(new Backoff(Date.now() + 1_000).pauseAfter({ code: grpc.status.UNAVAILABLE, metadata }, { safe: true }), null);
});

/** A google.rpc.Status with one detail, as the grpc-status-details-bin trailer carries it. */
function encodeStatus(code, typeUrl, value) {
  const protobuf = require('protobufjs');
  const { getProtoPath } = require('google-proto-files');
  const root = new protobuf.Root();
  const include = path.dirname(getProtoPath());
  root.resolvePath = (_origin, target) => path.join(include, target);
  root.loadSync('google/rpc/status.proto');
  const Status = root.lookupType('google.rpc.Status');
  return Buffer.from(Status.encode(Status.fromObject({ code, message: '', details: [{ type_url: typeUrl, value }] })).finish());
}
