'use strict';
/**
 * The Node worker end to end: the real vowd binary on a free port with
 * remote kinds declared, workers of ../worker.js polling it, and tasks
 * submitted and awaited through ../client.js.
 *
 * Every test has kinds of its own, so one test's worker never takes
 * another's tasks. Leases are short (1.5 s, a heartbeat every 0.5 s) so that
 * cancels and lost leases show quickly; every wait is a bounded wait on a
 * condition.
 *
 * VOWD names the binary; by default the debug build that
 * `cargo build --workspace --bins` leaves in target/debug/vowd (under
 * CARGO_TARGET_DIR when set).
 */

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const { once } = require('node:events');
const path = require('node:path');
const readline = require('node:readline');
const { after, before, describe, test } = require('node:test');

const { VowClient, fromPayload, grpc, loadVow, TERMINAL_STATES } = require('../client');
const { getProtoPath } = require('google-proto-files');
const protobuf = require('protobufjs');

const {
  ERROR_INFO_TYPE,
  RETRY_INFO_TYPE,
  decodeDetails,
  detailsOf,
  errorInfoAny,
  reasonOf,
  retryInfoAny,
} = require('../error_details');
const { TaskError, createWorker, statusOf } = require('../worker');

const { startVowd: startTestVowd, stopProcess } = require('../support/vowd');
const WORKER_SCRIPT = path.resolve(__dirname, '..', 'worker.js');
const HANDLERS_MODULE = path.resolve(__dirname, '..', 'handlers.js');
// Generous bounds for a loaded 2-core CI machine; each only turns a hang into a failure.
const STOP_TIMEOUT_MS = 45_000; // above vowd's default drain timeout (30 s)
const TEST_TIMEOUT_MS = 30_000;
const WAIT_MS = 10_000;
const LEASE_MS = 1_500;

const REMOTE_KINDS = [
  'node-echo',
  'node-invalid',
  'node-throw',
  'node-retry-after',
  'node-progress',
  'node-concurrency',
  'node-cancel',
  'node-deadline',
  'node-lease-lost',
  'node-drain',
  'node-release',
  'greet',
  'countdown',
];

let vowd;
let address;
let vow;

/** Starts vowd with every remote kind of these tests. */
function startVowd() {
  return startTestVowd(['--progress-interval', '10ms', ...REMOTE_KINDS.flatMap((kind) => ['--remote-kind', kind])]);
}

before(async () => {
  vowd = startVowd();
  address = await vowd.announced;
  vow = await VowClient.connect(address);
});

after(async () => {
  vow?.close();
  if (!vowd) return;
  const code = await stopProcess(vowd.child, 'SIGTERM', STOP_TIMEOUT_MS);
  assert.equal(code, 0, `vowd did not exit 0 after SIGTERM; stderr:\n${vowd.stderr()}`);
});

/** Polls `condition` every 10 ms until it returns a truthy value, which it resolves with; fails after `boundMs`. */
async function eventually(condition, what, boundMs = WAIT_MS) {
  const started = Date.now();
  for (;;) {
    const value = await condition();
    if (value) return value;
    assert.ok(Date.now() - started < boundMs, `timed out after ${boundMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Resolves with the first `event` of `emitter` whose argument passes `accept`; fails after `boundMs`. */
function nextEvent(emitter, event, accept = () => true, boundMs = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`timed out after ${boundMs} ms waiting for a ${event} event`));
    }, boundMs);
    const listener = (value) => {
      if (!accept(value)) return;
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(value);
    };
    emitter.on(event, listener);
  });
}

/** A promise with its resolve function, to hold a handler until the test lets it go. */
function gate() {
  let open;
  const opened = new Promise((resolve) => {
    open = resolve;
  });
  return { opened, open };
}

/** Resolves when `signal` aborts. */
function aborted(signal) {
  return signal.aborted ? Promise.resolve() : once(signal, 'abort');
}

/** The terminal task, through Await. */
async function finished(id) {
  const { done, task } = await vow.await(id, { timeoutMs: WAIT_MS });
  assert.ok(done, `task ${id} is still ${task.state} after ${WAIT_MS} ms`);
  return task;
}

/** A worker on the test's server, stopped after the test in any case. */
function startWorker(t, options) {
  const worker = createWorker({ target: address, leaseDurationMs: LEASE_MS, workerId: `test-${t.name.slice(0, 40)}`, ...options });
  const running = worker.run();
  running.catch(() => {}); // a test that expects a rejection awaits `running` itself
  t.after(() => worker.stop({ drainTimeoutMs: 0 }).catch(() => {}));
  return { worker, running };
}

describe('error mapping (no server)', () => {
  test('a TaskError keeps its code, reason, metadata and retry delay', () => {
    const status = statusOf(new TaskError('UNAVAILABLE', 'down', { reason: 'DB_DOWN', metadata: { host: 'a' }, retryAfterMs: 1500 }));
    assert.equal(status.code, grpc.status.UNAVAILABLE);
    assert.equal(status.message, 'down');
    const { errorInfo, retryInfo } = decodeDetails(status.details);
    assert.deepEqual(errorInfo, { reason: 'DB_DOWN', domain: 'vow.worker', metadata: { host: 'a' } });
    assert.deepEqual(retryInfo, { retryDelayMs: 1500 });
  });

  test('an error with a numeric gRPC code keeps it; any other error is INTERNAL', () => {
    assert.equal(statusOf(Object.assign(new Error('no'), { code: grpc.status.NOT_FOUND })).code, grpc.status.NOT_FOUND);
    const status = statusOf(new RangeError('oops'));
    assert.equal(status.code, grpc.status.INTERNAL);
    assert.equal(status.message, 'RangeError: oops');
    assert.equal(decodeDetails(status.details).errorInfo.reason, 'HANDLER_ERROR');
    assert.equal(statusOf(Object.assign(new Error('fs'), { code: 'ENOENT' })).code, grpc.status.INTERNAL);
    assert.throws(() => new TaskError('NOT_A_CODE', 'x'), RangeError);
  });

  test('encoded details decode to what was encoded', () => {
    const info = errorInfoAny({ reason: 'R', domain: 'd', metadata: { k: 'v', ü: 'ß' } });
    assert.deepEqual(decodeDetails([info]).errorInfo, { reason: 'R', domain: 'd', metadata: { k: 'v', ü: 'ß' } });
    assert.deepEqual(decodeDetails([retryInfoAny(0)]).retryInfo, { retryDelayMs: 0 });
    assert.deepEqual(decodeDetails([retryInfoAny(90_061_250)]).retryInfo, { retryDelayMs: 90_061_250 });
    // A RetryInfo whose Duration is cut short.
    assert.throws(() => decodeDetails([{ type_url: RETRY_INFO_TYPE, value: Buffer.from([0x0a, 0x05, 0x08]) }]), RangeError);
  });

  test('the details are the google.rpc messages of google-proto-files, in and out of a Status trailer', () => {
    const rpc = protobuf.loadSync([getProtoPath('rpc', 'error_details.proto'), getProtoPath('rpc', 'status.proto')]);
    const ErrorInfo = rpc.lookupType('google.rpc.ErrorInfo');
    const RetryInfo = rpc.lookupType('google.rpc.RetryInfo');
    const BadRequest = rpc.lookupType('google.rpc.BadRequest');
    const Status = rpc.lookupType('google.rpc.Status');

    const info = errorInfoAny({ reason: 'R', domain: 'd', metadata: { n: 7 } });
    assert.equal(info.type_url, `type.googleapis.com/${ErrorInfo.fullName.slice(1)}`);
    assert.deepEqual(ErrorInfo.toObject(ErrorInfo.decode(info.value)), { reason: 'R', domain: 'd', metadata: { n: '7' } });
    const retry = retryInfoAny(1_500);
    assert.equal(retry.type_url, `type.googleapis.com/${RetryInfo.fullName.slice(1)}`);
    assert.deepEqual(RetryInfo.toObject(RetryInfo.decode(retry.value), { longs: Number }), { retryDelay: { seconds: 1, nanos: 500_000_000 } });

    const badRequest = BadRequest.encode({ fieldViolations: [{ field: 'kinds[0]', description: 'unknown kind' }] }).finish();
    const trailer = Status.encode({
      code: grpc.status.INVALID_ARGUMENT,
      message: 'bad',
      details: [
        { type_url: ERROR_INFO_TYPE, value: info.value },
        { type_url: RETRY_INFO_TYPE, value: retry.value },
        { type_url: 'type.googleapis.com/google.rpc.BadRequest', value: badRequest },
      ],
    }).finish();
    const metadata = new grpc.Metadata();
    metadata.set('grpc-status-details-bin', Buffer.from(trailer));
    const error = Object.assign(new Error('bad'), { code: grpc.status.INVALID_ARGUMENT, metadata });
    assert.deepEqual(detailsOf(error), {
      errorInfo: { reason: 'R', domain: 'd', metadata: { n: '7' } },
      retryInfo: { retryDelayMs: 1_500 },
      badRequest: { fieldViolations: [{ field: 'kinds[0]', description: 'unknown kind' }] },
    });
    assert.equal(reasonOf(error), 'R');

    // No trailer, or one that does not decode: nothing.
    const none = { errorInfo: undefined, retryInfo: undefined, badRequest: undefined };
    assert.deepEqual(detailsOf(new Error('plain')), none);
    const garbled = new grpc.Metadata();
    garbled.set('grpc-status-details-bin', Buffer.from(trailer.subarray(0, trailer.length - 3)));
    assert.deepEqual(detailsOf(Object.assign(new Error('bad'), { metadata: garbled })), none);
  });
});

describe('a Node worker against vowd', () => {
  test('runs a task to SUCCEEDED through Submit and Await, with the lease context', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const contexts = [];
    const { worker } = startWorker(t, {
      handlers: {
        'node-echo': async (context) => {
          contexts.push(context);
          return { echoed: context.input, attempt: context.attempt };
        },
      },
    });

    const submitted = await vow.submit('node-echo', { hello: 'world', n: [1, 2] }, { labels: { team: 'node' } });
    const task = await finished(submitted.id);

    assert.equal(task.state, 'TASK_STATE_SUCCEEDED', JSON.stringify(task.error));
    assert.deepEqual(fromPayload(task.output), { echoed: { hello: 'world', n: [1, 2] }, attempt: 1 });
    assert.equal(task.workerId, worker.workerId);
    assert.equal(task.attempt, 1);
    const [context] = contexts;
    assert.equal(context.taskId, submitted.id);
    assert.equal(context.kind, 'node-echo');
    assert.deepEqual(context.labels, { team: 'node' });
    assert.equal(context.signal.aborted, false);
    // The attempt span's context: the submitter's trace, a span of its own.
    const [, traceId, spanId] = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/.exec(context.traceparent) ?? [];
    assert.equal(traceId, task.traceId, context.traceparent);
    assert.notEqual(spanId, '0000000000000000');
  });

  test('a thrown INVALID_ARGUMENT reaches the task: FAILED at once, with its reason', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    startWorker(t, {
      handlers: {
        'node-invalid': async () => {
          throw new TaskError('INVALID_ARGUMENT', 'the image is not a PNG', { reason: 'BAD_IMAGE', metadata: { format: 'gif' } });
        },
      },
    });

    const task = await finished((await vow.submit('node-invalid', { image: 'cat.gif' })).id);

    assert.equal(task.state, 'TASK_STATE_FAILED');
    assert.equal(task.attempt, 1, 'not retried');
    assert.ok(task.maxAttempts > 1, 'retries were allowed');
    assert.equal(task.error.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(task.error.message, 'the image is not a PNG');
    const { errorInfo } = decodeDetails(task.error.details);
    assert.equal(errorInfo.reason, 'BAD_IMAGE');
    assert.equal(errorInfo.metadata.format, 'gif');
  });

  test('any other thrown error is a retried INTERNAL', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const attempts = [];
    startWorker(t, {
      handlers: {
        'node-throw': async ({ attempt }) => {
          attempts.push(attempt);
          throw new TypeError(`broken on attempt ${attempt}`);
        },
      },
    });
    const retry = { maxAttempts: 2, initialBackoff: { seconds: '0', nanos: 10e6 } };

    const task = await finished((await vow.submit('node-throw', {}, { retry })).id);

    assert.equal(task.state, 'TASK_STATE_FAILED');
    assert.deepEqual(attempts, [1, 2]);
    assert.equal(task.error.code, grpc.status.INTERNAL);
    assert.equal(task.error.message, 'TypeError: broken on attempt 2');
    assert.equal(decodeDetails(task.error.details).errorInfo.reason, 'HANDLER_ERROR');
  });

  test('a retry-after in the error sets the delay before the next attempt', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { worker } = startWorker(t, {
      handlers: {
        'node-retry-after': async ({ attempt }) => {
          if (attempt === 1) throw new TaskError('UNAVAILABLE', 'try again soon', { retryAfterMs: 200 });
          return { attempt };
        },
      },
    });
    // Without the retry delay the backoff would be 10 s (jitter 0).
    const retry = { maxAttempts: 2, initialBackoff: { seconds: '10', nanos: 0 }, jitter: 0 };
    const completed = nextEvent(worker, 'completed'); // listening before the submit: the worker is quick
    const submitted = await vow.submit('node-retry-after', {}, { retry });
    const afterFirst = await completed;
    assert.equal(afterFirst.id, submitted.id);

    assert.equal(afterFirst.state, 'TASK_STATE_RETRY_WAIT');
    const delayMs = Number(afterFirst.nextAttemptTime.seconds) * 1000 + afterFirst.nextAttemptTime.nanos / 1e6 -
      (Number(afterFirst.updateTime.seconds) * 1000 + afterFirst.updateTime.nanos / 1e6);
    assert.ok(delayMs > 0 && delayMs < 1_000, `the next attempt is due ${delayMs} ms after the failure`);
    const task = await finished(submitted.id);
    assert.equal(task.state, 'TASK_STATE_SUCCEEDED');
    assert.equal(task.attempt, 2);
  });

  test('reported progress is visible through Get while the handler runs', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const release = gate();
    startWorker(t, {
      handlers: {
        'node-progress': async ({ reportProgress }) => {
          reportProgress(40, 'resizing');
          await release.opened;
          return 'done';
        },
      },
    });
    const submitted = await vow.submit('node-progress', {});

    const running = await eventually(async () => {
      const task = await vow.get(submitted.id);
      return task.progress?.percent === 40 ? task : null;
    }, 'progress 40 % through Get');
    release.open();

    assert.equal(running.state, 'TASK_STATE_RUNNING');
    assert.equal(running.progress.message, 'resizing');
    const task = await finished(submitted.id);
    assert.equal(task.state, 'TASK_STATE_SUCCEEDED');
    assert.equal(fromPayload(task.output), 'done');
  });

  test('runs at most `concurrency` handlers at once', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const release = gate();
    let running = 0;
    let mostAtOnce = 0;
    startWorker(t, {
      concurrency: 2,
      handlers: {
        'node-concurrency': async () => {
          running += 1;
          mostAtOnce = Math.max(mostAtOnce, running);
          await release.opened;
          running -= 1;
          return null;
        },
      },
    });
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await vow.submit('node-concurrency', { i })).id);

    await eventually(() => running === 2, 'two handlers running');
    const states = await Promise.all(ids.map(async (id) => (await vow.get(id)).state));
    assert.deepEqual(states.filter((state) => state === 'TASK_STATE_QUEUED').length, 1, `states: ${states}`);
    release.open();

    for (const id of ids) assert.equal((await finished(id)).state, 'TASK_STATE_SUCCEEDED');
    assert.equal(mostAtOnce, 2);
  });

  test('a cancel aborts the handler at the next heartbeat and the task ends CANCELLED', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    let abortReason;
    const { worker } = startWorker(t, {
      handlers: {
        'node-cancel': async ({ signal }) => {
          await aborted(signal);
          abortReason = signal.reason;
          throw signal.reason;
        },
      },
    });
    const leased = nextEvent(worker, 'lease');
    const submitted = await vow.submit('node-cancel', {});
    await leased;

    let heartbeatsAfterCancel = null;
    worker.on('heartbeat', ({ taskId }) => {
      if (taskId === submitted.id && heartbeatsAfterCancel !== null) heartbeatsAfterCancel += 1;
    });
    const abortedEvent = nextEvent(worker, 'aborted', ({ taskId }) => taskId === submitted.id);
    const cancelled = await vow.cancel(submitted.id, 'not needed');
    heartbeatsAfterCancel = 0;
    const { why } = await abortedEvent;

    assert.equal(cancelled.state, 'TASK_STATE_RUNNING', 'a running remote task waits for its worker');
    assert.equal(why, 'cancelled');
    assert.ok(heartbeatsAfterCancel <= 1, `the cancel took ${heartbeatsAfterCancel} heartbeats to arrive`);
    const task = await finished(submitted.id);
    assert.equal(abortReason.why, 'cancelled');
    assert.equal(task.state, 'TASK_STATE_CANCELLED');
    assert.equal(task.attempt, 1);
  });

  test('the signal aborts at the attempt deadline, and the attempt fails DEADLINE_EXCEEDED', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    let deadline;
    startWorker(t, {
      handlers: {
        'node-deadline': async (context) => {
          deadline = context.deadline;
          await aborted(context.signal);
          throw context.signal.reason;
        },
      },
    });
    const submitted = await vow.submit('node-deadline', {}, { attemptTimeout: { seconds: '1', nanos: 0 }, retry: { maxAttempts: 1 } });

    const task = await finished(submitted.id);

    assert.ok(deadline instanceof Date, 'the context carries the attempt deadline');
    assert.equal(task.state, 'TASK_STATE_FAILED');
    assert.equal(task.error.code, grpc.status.DEADLINE_EXCEEDED);
    assert.equal(decodeDetails(task.error.details).errorInfo.reason, 'ATTEMPT_TIMEOUT');
  });

  test('a lost lease aborts the handler, whose outcome is then dropped', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const reasons = [];
    let calls = 0;
    const { worker } = startWorker(t, {
      handlers: {
        'node-lease-lost': async ({ signal, attempt }) => {
          calls += 1;
          if (calls > 1) return { attempt }; // the second lease
          await aborted(signal);
          reasons.push(signal.reason.why);
          return 'ignored';
        },
      },
    });
    const completed = [];
    worker.on('completed', (task) => completed.push(task));
    const leased = nextEvent(worker, 'lease');
    const submitted = await vow.submit('node-lease-lost', {});
    const lease = await leased;
    assert.equal(lease.task.id, submitted.id);

    // Someone else hands the lease back, as a worker that lost track of it would.
    const workers = new (loadVow().WorkerService)(address, grpc.credentials.createInsecure());
    t.after(() => workers.close());
    const released = await new Promise((resolve, reject) =>
      workers.Release({ tokens: [lease.token], reason: 'test' }, (error, response) => (error ? reject(error) : resolve(response))),
    );
    assert.equal(released.released, 1);
    const task = await finished(submitted.id);
    await eventually(() => reasons.length > 0, 'the first handler to be aborted');

    assert.deepEqual(reasons, ['lease-lost']);
    assert.equal(task.state, 'TASK_STATE_SUCCEEDED');
    assert.deepEqual(fromPayload(task.output), { attempt: 1 }, 'the released attempt was not counted');
    assert.equal(completed.length, 1, 'only the second lease was completed');
  });

  test('stop() waits for running handlers within the drain timeout', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const release = gate();
    const { worker } = startWorker(t, {
      drainTimeoutMs: WAIT_MS,
      handlers: {
        'node-drain': async ({ signal }) => {
          await release.opened;
          return { aborted: signal.aborted };
        },
      },
    });
    const released = [];
    worker.on('released', (event) => released.push(event));
    const leased = nextEvent(worker, 'lease');
    const submitted = await vow.submit('node-drain', {});
    await leased;

    const stopped = worker.stop();
    release.open();
    await stopped;

    const task = await vow.get(submitted.id);
    assert.equal(task.state, 'TASK_STATE_SUCCEEDED');
    assert.deepEqual(fromPayload(task.output), { aborted: false });
    assert.deepEqual(released, []);
  });

  test('stop() releases a lease left after the drain: the task runs again, its attempt not counted', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    let firstReason;
    const first = startWorker(t, {
      drainTimeoutMs: 100,
      handlers: {
        'node-release': async ({ signal }) => {
          await aborted(signal);
          firstReason = signal.reason.why;
          throw signal.reason;
        },
      },
    });
    const releasedEvent = nextEvent(first.worker, 'released');
    const leased = nextEvent(first.worker, 'lease');
    const submitted = await vow.submit('node-release', {}, { retry: { maxAttempts: 1 } });
    await leased;
    assert.equal((await vow.get(submitted.id)).attempt, 1);

    await first.worker.stop();

    assert.equal(firstReason, 'worker-stopping');
    assert.equal((await releasedEvent).released, 1);
    const queued = await vow.get(submitted.id);
    assert.equal(queued.state, 'TASK_STATE_QUEUED');
    assert.equal(queued.attempt, 0, 'the released attempt is not counted');

    // Its only attempt was not used up: another worker runs it.
    const second = startWorker(t, { handlers: { 'node-release': async ({ attempt }) => ({ attempt }) } });
    const task = await finished(submitted.id);
    assert.equal(task.state, 'TASK_STATE_SUCCEEDED');
    assert.equal(task.attempt, 1);
    assert.equal(task.workerId, second.worker.workerId);
  });

  test('polling for a kind the server does not declare fails INVALID_ARGUMENT', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { running } = startWorker(t, { handlers: { 'node-undeclared': async () => null } });

    const error = await running.then(
      () => assert.fail('run() resolved'),
      (error) => error,
    );

    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(reasonOf(error), 'INVALID_REQUEST');
    const { badRequest } = detailsOf(error);
    assert.equal(badRequest.fieldViolations[0].field, 'kinds[0]');
    assert.match(badRequest.fieldViolations[0].description, /unknown kind "node-undeclared"/);
  });
});

describe('worker.js run directly', () => {
  test('serves a handlers module, and on SIGTERM releases what it could not finish', { timeout: TEST_TIMEOUT_MS }, async () => {
    const child = spawn(
      process.execPath,
      [WORKER_SCRIPT, address, HANDLERS_MODULE, '--lease-duration-ms', String(LEASE_MS), '--drain-timeout-ms', '100', '--worker-id', 'cli'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const log = [];
    readline.createInterface({ input: child.stderr }).on('line', (line) => log.push(line));
    try {
      const greeted = await finished((await vow.submit('greet', { name: 'Ada' })).id);
      assert.equal(greeted.state, 'TASK_STATE_SUCCEEDED', log.join('\n'));
      assert.deepEqual(fromPayload(greeted.output), { greeting: 'Hello, Ada!' });
      const refused = await finished((await vow.submit('greet', {})).id);
      assert.equal(refused.state, 'TASK_STATE_FAILED');
      assert.equal(refused.error.code, grpc.status.INVALID_ARGUMENT);

      const long = await vow.submit('countdown', { from: 100, ms: 100 });
      await eventually(async () => (await vow.get(long.id)).progress !== null, 'countdown progress');

      assert.equal(await stopProcess(child, 'SIGTERM', WAIT_MS), 0, log.join('\n'));
      const released = await vow.get(long.id);
      assert.equal(released.state, 'TASK_STATE_QUEUED', log.join('\n'));
      assert.equal(released.attempt, 0);
      assert.ok(!TERMINAL_STATES.has(released.state));
      assert.ok(log.some((line) => line.includes('"event":"released"')), log.join('\n'));
      // Nobody serves countdown any more: forget the task.
      await vow.cancel(long.id, 'test over');
    } finally {
      await stopProcess(child, 'SIGKILL', WAIT_MS);
    }
  });
});
