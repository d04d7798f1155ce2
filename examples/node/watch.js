#!/usr/bin/env node
'use strict';
/**
 * Submits a task and prints its Watch stream, one JSON line per event:
 *
 *     node watch.js ADDR KIND JSON                    # submit, then watch from the snapshot
 *     node watch.js ADDR --id ID [--after REVISION]   # watch (or resume) an existing task
 *
 * Each line is {"type", "id", "revision", "state", "progress"} (progress is
 * null until the handler reports some). Exits 0 when the server closes the
 * stream with OK (after the terminal change), 1 with the gRPC status on
 * stderr otherwise, 2 on bad usage.
 */

const { VowClient } = require('./client');

const USAGE = 'usage: node watch.js ADDR KIND JSON | node watch.js ADDR --id ID [--after REVISION]';

function parseArguments(argv) {
  const [address, ...rest] = argv;
  if (!address) return null;
  if (rest[0] === '--id') {
    const [, id, flag, after] = rest;
    if (!id || (flag !== undefined && (flag !== '--after' || !/^\d+$/.test(after ?? '')))) return null;
    return { address, id, afterRevision: after ?? '0' };
  }
  if (rest.length !== 2) return null;
  const [kind, json] = rest;
  try {
    return { address, kind, input: JSON.parse(json), afterRevision: '0' };
  } catch (error) {
    throw new Error(`JSON input does not parse: ${error.message}`);
  }
}

/** The line printed for one WatchResponse. */
function eventLine(response) {
  const task = response.task;
  return JSON.stringify({
    type: response.type,
    id: task?.id ?? null,
    revision: task ? Number(task.revision) : null,
    state: task?.state ?? null,
    progress: task?.progress ? { percent: task.progress.percent, message: task.progress.message } : null,
  });
}

async function main() {
  const options = parseArguments(process.argv.slice(2));
  if (!options) {
    console.error(USAGE);
    return 2;
  }
  const vow = await VowClient.connect(options.address);
  try {
    const id = options.id ?? (await vow.submit(options.kind, options.input)).id;
    const watch = vow.watch(id, { afterRevision: options.afterRevision });
    // Ctrl-C stops the stream; the loop then ends with CANCELLED.
    process.once('SIGINT', () => watch.cancel());
    for await (const response of watch) {
      process.stdout.write(`${eventLine(response)}\n`);
    }
    return 0;
  } finally {
    vow.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    console.error(`watch.js: ${error.message}`);
    process.exitCode = 1;
  },
);
