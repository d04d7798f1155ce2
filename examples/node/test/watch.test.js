'use strict';
/**
 * Watch end to end from Node: the real vowd binary on a free port, the
 * client of ../client.js and the watch.js script, over a real connection.
 *
 * VOWD names the binary; by default the debug build that
 * `cargo build --workspace --bins` leaves in target/debug/vowd (under
 * CARGO_TARGET_DIR when set).
 */

const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const path = require('node:path');
const { after, before, test } = require('node:test');
const { promisify } = require('node:util');

const { VowClient, TERMINAL_STATES } = require('../client');

const { startVowd: startTestVowd, stopProcess } = require('../support/vowd');
const WATCH_SCRIPT = path.resolve(__dirname, '..', 'watch.js');
// Generous bounds for a loaded 2-core CI machine; each only turns a hang into a failure.
const STOP_TIMEOUT_MS = 45_000; // above vowd's default drain timeout (30 s)
const TEST_TIMEOUT_MS = 30_000;
const WATCH_TIMEOUT_MS = 20_000;

let vowd;
let address;
let vow;

/** Starts vowd with fine-grained progress. */
function startVowd() {
  return startTestVowd(['--progress-interval', '10ms']);
}

/** SIGTERM, as an orchestrator would; a clean drain exits 0. */
async function stopVowd({ child, stderr }) {
  const code = await stopProcess(child, 'SIGTERM', STOP_TIMEOUT_MS);
  assert.equal(code, 0, `vowd did not exit 0 after SIGTERM; stderr:\n${stderr()}`);
}

before(async () => {
  vowd = startVowd();
  address = await vowd.announced;
  vow = await VowClient.connect(address);
});

after(async () => {
  vow?.close();
  if (vowd) await stopVowd(vowd);
});

/** Polls `condition` every 10 ms until it holds; fails after `boundMs`. */
async function eventually(condition, what, boundMs = 10_000) {
  const started = Date.now();
  while (!(await condition())) {
    assert.ok(Date.now() - started < boundMs, `timed out after ${boundMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Every revision is the previous one plus one: in order, no gap, no duplicate. */
function assertContiguous(revisions) {
  for (let i = 1; i < revisions.length; i++) {
    assert.equal(revisions[i], revisions[i - 1] + 1, `revisions ${revisions.join(',')} are not contiguous at ${i}`);
  }
}

test('a watched sleep task streams its snapshot, progress, then SUCCEEDED, and ends OK', { timeout: TEST_TIMEOUT_MS }, async () => {
  const task = await vow.submit('sleep', { ms: 600 });

  const watch = vow.watch(task.id, { timeoutMs: WATCH_TIMEOUT_MS });
  const events = [];
  for await (const event of watch) events.push(event);
  const status = await watch.status;

  assert.equal(status.code, 0, `the stream ended with ${status.code} ${status.details}`);
  const [first, ...changes] = events;
  assert.equal(first.type, 'WATCH_EVENT_TYPE_SNAPSHOT');
  assert.equal(first.task.id, task.id);
  assert.ok(changes.length > 0, 'changes follow the snapshot');
  for (const change of changes) assert.equal(change.type, 'WATCH_EVENT_TYPE_CHANGE');
  assertContiguous(events.map((event) => Number(event.task.revision)));
  assert.ok(Number(first.task.revision) >= Number(task.revision), 'the snapshot is not older than the submit answer');

  const progress = changes.filter((change) => change.task.state === 'TASK_STATE_RUNNING' && change.task.progress?.percent > 0);
  assert.ok(progress.length > 0, `a progress change was streamed: ${JSON.stringify(changes.map((c) => c.task.progress))}`);
  const percents = progress.map((change) => change.task.progress.percent);
  assert.deepEqual(percents, [...percents].sort((a, b) => a - b), 'progress never goes back');

  const last = events.at(-1).task;
  assert.equal(last.state, 'TASK_STATE_SUCCEEDED');
  // The stream closes right after the terminal change: nothing is terminal before it.
  for (const event of events.slice(0, -1)) assert.ok(!TERMINAL_STATES.has(event.task.state));
});

test('a watch resumed with after_revision k continues at k+1, without gap or duplicate', { timeout: TEST_TIMEOUT_MS }, async () => {
  // Long enough to still be running when the second watch starts: the server
  // replays missed changes of a running task from its retained history.
  const task = await vow.submit('sleep', { ms: 1500, steps: 15 });

  const firstWatch = vow.watch(task.id, { timeoutMs: WATCH_TIMEOUT_MS });
  const seen = [];
  for await (const event of firstWatch) {
    seen.push(event);
    if (event.type === 'WATCH_EVENT_TYPE_CHANGE' && event.task.progress?.percent > 0) break; // the "broken" stream
  }
  const firstStatus = await firstWatch.status;
  assert.equal(firstStatus.code, 1, 'leaving the loop cancels the call (CANCELLED)');
  const k = Number(seen.at(-1).task.revision);
  assert.ok(!TERMINAL_STATES.has(seen.at(-1).task.state), 'the first watch stopped before the end');
  // Let changes happen while nobody watches, so the resume has some to replay.
  await eventually(async () => Number((await vow.get(task.id)).revision) >= k + 2, `task ${task.id} to pass revision ${k + 1}`);

  const resumed = vow.watch(task.id, { afterRevision: k, timeoutMs: WATCH_TIMEOUT_MS });
  const replayed = [];
  for await (const event of resumed) replayed.push(event);
  const status = await resumed.status;

  assert.equal(status.code, 0, `the resumed stream ended with ${status.code} ${status.details}`);
  assert.ok(replayed.length > 0);
  assert.equal(replayed[0].type, 'WATCH_EVENT_TYPE_CHANGE', 'a replay, not a snapshot or a resync');
  assert.equal(Number(replayed[0].task.revision), k + 1);
  for (const event of replayed) assert.equal(event.type, 'WATCH_EVENT_TYPE_CHANGE');
  assertContiguous([...seen, ...replayed].map((event) => Number(event.task.revision)));
  assert.equal(replayed.at(-1).task.state, 'TASK_STATE_SUCCEEDED');
});

test('watching an unknown task fails with NOT_FOUND', { timeout: TEST_TIMEOUT_MS }, async () => {
  const watch = vow.watch('0123456789abcdef0123456789abcdef', { timeoutMs: WATCH_TIMEOUT_MS });

  await assert.rejects(async () => {
    for await (const event of watch) assert.fail(`unexpected ${JSON.stringify(event)}`);
  }, { code: 5 });
  assert.equal((await watch.status).code, 5);
});

test('watch.js submits, prints one JSON line per event and exits 0', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [WATCH_SCRIPT, address, 'sleep', '{"ms": 300, "steps": 3}'], {
    timeout: WATCH_TIMEOUT_MS,
  });

  const lines = stdout.trim().split('\n').map((line) => JSON.parse(line));
  assert.equal(lines[0].type, 'WATCH_EVENT_TYPE_SNAPSHOT');
  assert.ok(lines.some((line) => line.progress?.percent > 0), stdout);
  assert.equal(lines.at(-1).state, 'TASK_STATE_SUCCEEDED');
  assertContiguous(lines.map((line) => line.revision));
  assert.ok(lines.every((line) => line.id === lines[0].id));
});
