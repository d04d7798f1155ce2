'use strict';
/**
 * A vowd with --auth-file, reached with a key from `vowd keys new`: the
 * client's and the worker's `token` option, and the refusal without one.
 */

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test } = require('node:test');

const { VowClient, grpc } = require('../client');
const { createWorker } = require('../worker');

const { VOWD, startVowd: startTestVowd } = require('../support/vowd');
const TIMEOUT_MS = 20_000;

function newKey(namespace) {
  const printed = execFileSync(VOWD, ['keys', 'new', '--namespace', namespace, '--permissions', 'submit,read,work', '--name', 'node-test'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const [key, ...entry] = printed.split('\n');
  return { key, entry: entry.join('\n') };
}

async function startVowd(args) {
  const vowd = startTestVowd(args);
  return { child: vowd.child, address: await vowd.announced };
}

test('a key of the auth file lets the client and the worker in, into its namespace', { timeout: TIMEOUT_MS * 2 }, async () => {
  const { key, entry } = newKey('node-team');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vow-node-token-'));
  const authFile = path.join(dir, 'auth.toml');
  fs.writeFileSync(authFile, entry);
  const { child, address } = await startVowd(['--auth-file', authFile, '--remote-kind', 'shout']);
  const worker = createWorker({
    target: address,
    token: key,
    handlers: { shout: async ({ input }) => String(input).toUpperCase() },
  });
  const running = worker.run();
  try {
    const anonymous = await VowClient.connect(address);
    await assert.rejects(anonymous.submit('shout', 'hi'), (error) => error.code === grpc.status.UNAUTHENTICATED);
    anonymous.close();

    const vow = await VowClient.connect(address, { token: key });
    const task = await vow.submit('shout', 'hi');
    assert.equal(task.namespace, 'node-team');
    const { done, task: finished } = await vow.await(task.id, { timeoutMs: TIMEOUT_MS });
    assert.ok(done, 'the worker with the token ran the task');
    assert.equal(finished.state, 'TASK_STATE_SUCCEEDED');
    vow.close();
  } finally {
    worker.stop();
    await running.catch(() => {});
    child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
