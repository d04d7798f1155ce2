#!/usr/bin/env node
'use strict';
/**
 * A remote worker of the Vow task service (vow.v1.WorkerService): it runs
 * async handlers for remote kinds, the Node twin of the Rust
 * `vow_client::Worker`.
 *
 *     const { createWorker, TaskError } = require('./worker');
 *     const worker = createWorker({
 *       target: '127.0.0.1:50051',
 *       handlers: {
 *         async resize(context) {             // context.input is plain JSON (or a Buffer)
 *           context.reportProgress(50, 'halfway');
 *           if (!context.input.image) throw new TaskError('INVALID_ARGUMENT', 'no image');
 *           await fetch(url, { signal: context.signal }); // stops on cancel, deadline, lost lease
 *           return { resized: true };         // the task's output
 *         },
 *       },
 *       concurrency: 8,
 *     });
 *     process.once('SIGTERM', () => worker.stop());
 *     await worker.run();                     // resolves once stopped and drained
 *
 * It long-polls leases as slots free up, renews each lease at a third of
 * its duration while the handler runs (sending the latest progress), and
 * aborts the handler's `signal` when the task is cancelled, at the
 * attempt deadline, and when the lease is lost. The handler's return value
 * completes the attempt; a thrown error fails it with its gRPC `code`
 * (a number or a name like 'UNAVAILABLE'), `reason` and `retryAfterMs`
 * (see TaskError), any other error with INTERNAL. `stop()` stops polling,
 * lets running handlers finish for `drainTimeoutMs`, then aborts the rest
 * and releases their leases: their tasks run again at once, the attempt
 * not counted.
 *
 * Run directly, it serves the handlers a module exports:
 *
 *     node worker.js ADDR HANDLERS.js [--concurrency N] [--lease-duration-ms MS]
 *                                      [--drain-timeout-ms MS] [--worker-id ID]
 */

const { EventEmitter } = require('node:events');
const os = require('node:os');
const path = require('node:path');

const { fromPayload, grpc, loadVow, stubOptions, toPayload } = require('./client');
const { errorInfoAny, reasonOf, retryInfoAny } = require('./error_details');
const { TRANSIENT_CODES } = require('./retry');

/** How long one Poll waits for work on the server before asking again. */
const POLL_WAIT_MS = 30_000;
/**
 * Bounds of the pause after a failed Poll: exponential with full jitter,
 * so that a Poll ended by a draining replica goes on at another at once,
 * and a server that stays away is asked every 2 s at most.
 */
const POLL_BACKOFF_MS = 100;
const POLL_MAX_BACKOFF_MS = 2_000;
/** How long a Complete is retried while the server is unreachable. */
const COMPLETE_RETRY_BOUND_MS = 60_000;
/** The ErrorInfo domain of errors this worker reports. */
const ERROR_DOMAIN = 'vow.worker';
/** setTimeout takes at most 2^31 - 1 ms; longer waits are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Poll errors that retrying cannot fix: the worker stops and `run()` rejects. */
const FATAL_POLL_CODES = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.UNIMPLEMENTED,
  grpc.status.FAILED_PRECONDITION,
]);
/**
 * Complete errors worth retrying (the same Complete repeated answers as the
 * first): the server unreachable or draining, what proxies make of a stream
 * reset by a replica going away (retry.js), or the call's own deadline.
 */
const COMPLETE_RETRY_CODES = new Set([...TRANSIENT_CODES, grpc.status.DEADLINE_EXCEEDED]);

/**
 * An error a handler throws to fail its attempt with a given gRPC code:
 * retried for UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED
 * and INTERNAL (after `retryAfterMs` when set), final otherwise. `reason`
 * (default: the code's name) is matched against the task's
 * `non_retryable_reasons`; `metadata` is a plain object of strings.
 * Any error with a numeric `code` from 1 to 16 (a grpc-js error, say) is
 * read the same way.
 */
class TaskError extends Error {
  constructor(code, message, { reason, metadata, retryAfterMs } = {}) {
    super(message);
    this.name = 'TaskError';
    this.code = typeof code === 'string' ? grpc.status[code] : code;
    if (!(this.code >= 1 && this.code <= 16)) throw new RangeError(`${code} is not a gRPC error code`);
    this.reason = reason;
    this.metadata = metadata;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * The `signal.reason` of an aborted handler; `why` is 'cancelled',
 * 'deadline', 'lease-lost' or 'worker-stopping'.
 */
class AttemptAborted extends Error {
  constructor(why, message) {
    super(message);
    this.name = 'AbortError';
    this.why = why;
  }
}

/** A google.rpc.Status for what a handler threw. */
function statusOf(error) {
  const code = typeof error?.code === 'string' ? grpc.status[error.code] : error?.code;
  if (!(Number.isInteger(code) && code >= 1 && code <= 16)) {
    const name = error?.name ?? typeof error;
    const message = error instanceof Error ? error.message : String(error);
    return {
      code: grpc.status.INTERNAL,
      message: `${name}: ${message}`,
      details: [errorInfoAny({ reason: 'HANDLER_ERROR', domain: ERROR_DOMAIN, metadata: { error_name: String(name) } })],
    };
  }
  const details = [errorInfoAny({ reason: error.reason ?? '', domain: ERROR_DOMAIN, metadata: error.metadata ?? {} })];
  if (Number.isFinite(error.retryAfterMs) && error.retryAfterMs >= 0) details.push(retryInfoAny(error.retryAfterMs));
  return { code, message: String(error.message ?? error.details ?? ''), details };
}

/** Milliseconds since the epoch of a decoded google.protobuf.Timestamp (null when unset). */
function timestampMs(timestamp) {
  return timestamp ? Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6) : null;
}

function durationOf(ms) {
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

/** setTimeout for any delay (re-armed past 24.8 days); returns a cancel function. */
function timerAt(atMs, callback) {
  let timer;
  const arm = () => {
    const delay = atMs - Date.now();
    if (delay <= 0) return callback();
    timer = setTimeout(arm, Math.min(delay, MAX_TIMER_MS));
  };
  arm();
  return () => clearTimeout(timer);
}

/**
 * A worker of remote kinds; see the module comment. Emits, for logs and
 * tests: 'lease' (the Lease), 'heartbeat' ({ taskId, token }, as one is sent),
 * 'aborted' ({ taskId, why }), 'completed' (the task after Complete),
 * 'released' ({ tokens, released }) and 'warning' (an error the worker
 * survived: a failed Poll, a Complete it gave up).
 */
class Worker extends EventEmitter {
  constructor({
    target,
    handlers,
    kinds = Object.keys(handlers ?? {}),
    concurrency = 4,
    leaseDurationMs,
    drainTimeoutMs = 30_000,
    workerId = `${os.hostname()}-${process.pid}`,
    credentials = grpc.credentials.createInsecure(),
    protoRoot,
    token,
    channelOptions = {},
  }) {
    super();
    if (!target) throw new TypeError('createWorker needs a target (host:port)');
    if (kinds.length === 0) throw new TypeError('createWorker needs at least one kind');
    this.handlers = handlers;
    this.kinds = kinds;
    this.concurrency = Math.max(1, Math.floor(concurrency));
    this.leaseDurationMs = leaseDurationMs;
    this.drainTimeoutMs = drainTimeoutMs;
    this.workerId = workerId;
    const vow = loadVow(protoRoot);
    this.stub = new vow.WorkerService(target, credentials, { ...stubOptions(token), ...channelOptions });
    /** Running attempts by token. */
    this.attempts = new Map();
    this.stopping = false;
    this.pollCall = null;
    this.wakePoller = null;
    this.done = null;
  }

  /** Polls and runs attempts until `stop()`; resolves once drained, rejects when the server refuses the polls. */
  run() {
    this.done ??= this.pollLoop().finally(() => this.stub.close());
    return this.done;
  }

  /**
   * Stops polling, waits up to `drainTimeoutMs` for running handlers, then
   * aborts the rest and releases their leases. Resolves like `run()`.
   */
  stop({ drainTimeoutMs = this.drainTimeoutMs } = {}) {
    if (!this.stopping) {
      this.stopping = true;
      this.stopDrainTimeoutMs = drainTimeoutMs;
      this.pollCall?.cancel();
      this.wake();
    }
    return this.run();
  }

  wake() {
    const wake = this.wakePoller;
    this.wakePoller = null;
    wake?.();
  }

  /** Resolves when woken (a slot freed, stop()) or after `ms`. */
  pause(ms) {
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(resolve, ms);
      this.wakePoller = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  unary(method, request, timeoutMs) {
    return new Promise((resolve, reject) => {
      const call = this.stub[method](request, { deadline: new Date(Date.now() + timeoutMs) }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
      if (method === 'Poll') this.pollCall = call;
    });
  }

  async pollLoop() {
    let fatal;
    let backoffMs = POLL_BACKOFF_MS;
    while (!this.stopping) {
      const free = this.concurrency - this.attempts.size;
      if (free <= 0) {
        await this.pause();
        continue;
      }
      const request = {
        kinds: this.kinds,
        workerId: this.workerId,
        maxTasks: free,
        leaseDuration: this.leaseDurationMs === undefined ? null : durationOf(this.leaseDurationMs),
        timeout: durationOf(POLL_WAIT_MS),
      };
      let leases;
      try {
        ({ leases } = await this.unary('Poll', request, POLL_WAIT_MS + 5_000));
      } catch (error) {
        if (this.stopping) break;
        if (FATAL_POLL_CODES.has(error.code)) {
          fatal = error;
          break;
        }
        this.emit('warning', error);
        await this.pause(Math.random() * backoffMs);
        backoffMs = Math.min(backoffMs * 2, POLL_MAX_BACKOFF_MS);
        continue;
      } finally {
        this.pollCall = null;
      }
      backoffMs = POLL_BACKOFF_MS;
      if (this.stopping) {
        // Granted as the worker stopped: hand them back unstarted.
        await this.release(leases.map((lease) => lease.token));
        break;
      }
      for (const lease of leases) this.startAttempt(lease);
    }
    this.stopping = true;
    await this.drain(this.stopDrainTimeoutMs ?? this.drainTimeoutMs);
    if (fatal) throw fatal;
  }

  async drain(drainTimeoutMs) {
    if (this.attempts.size === 0) return;
    let timer;
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => resolve(true), drainTimeoutMs);
    });
    const finished = Promise.all([...this.attempts.values()].map((attempt) => attempt.finished)).then(() => false);
    const late = await Promise.race([finished, timedOut]);
    clearTimeout(timer);
    if (!late) return;
    const leftovers = [...this.attempts.values()];
    for (const attempt of leftovers) attempt.abandon();
    await this.release(leftovers.map((attempt) => attempt.token));
  }

  async release(tokens) {
    if (tokens.length === 0) return;
    try {
      const { released } = await this.unary('Release', { tokens, reason: 'the worker is shutting down' }, 10_000);
      this.emit('released', { tokens, released });
    } catch (error) {
      // The leases lapse by themselves; the tasks then run again (the attempt counted).
      this.emit('warning', error);
    }
  }

  startAttempt(lease) {
    const attempt = new Attempt(this, lease);
    this.attempts.set(lease.token, attempt);
    this.emit('lease', lease);
    attempt.finished = attempt.run().finally(() => {
      this.attempts.delete(lease.token);
      this.wake();
    });
  }
}

/** One leased attempt: the handler, its heartbeats, its timers, its Complete. */
class Attempt {
  constructor(worker, lease) {
    this.worker = worker;
    this.lease = lease;
    this.token = lease.token;
    this.task = lease.task;
    this.controller = new AbortController();
    this.progress = null;
    // The lease asked for, or (the server's default) what the grant says is
    // left of it; measured on this machine's clock from here on, so that a
    // clock apart from the server's does not bend the heartbeats.
    const leaseMs = worker.leaseDurationMs ?? Math.max(1_000, timestampMs(lease.expireTime) - Date.now());
    this.leaseMs = leaseMs;
    this.renewedAtMs = Date.now();
    this.heartbeatEveryMs = leaseMs / 3;
    this.heartbeatTimer = null;
    /** Heartbeats go on until the handler returns (or the lease is lost). */
    this.renewing = true;
    this.abandoned = false;
    this.stopTimers = [];
  }

  /** Aborts the handler once, for the first reason that comes. */
  abort(why, message) {
    if (this.controller.signal.aborted) return;
    this.controller.abort(new AttemptAborted(why, message));
    this.worker.emit('aborted', { taskId: this.task.id, why });
  }

  /** The worker gave up on this attempt (its lease is being released): nothing more is sent. */
  abandon() {
    this.abandoned = true;
    this.abort('worker-stopping', 'the worker is shutting down');
    this.stopBackground();
  }

  stopBackground() {
    this.renewing = false;
    clearTimeout(this.heartbeatTimer);
    for (const stop of this.stopTimers) stop();
    this.stopTimers = [];
  }

  context() {
    const task = this.task;
    const deadlineMs = timestampMs(this.lease.attemptDeadline);
    return {
      task,
      taskId: task.id,
      kind: task.kind,
      input: fromPayload(task.input),
      labels: task.labels ?? {},
      attempt: task.attempt,
      maxAttempts: task.maxAttempts,
      deadline: deadlineMs === null ? null : new Date(deadlineMs),
      signal: this.controller.signal,
      traceparent: this.lease.traceparent,
      tracestate: this.lease.tracestate,
      workerId: this.worker.workerId,
      /** Progress for the next heartbeat: percent from 0 to 100, a short note. */
      reportProgress: (percent, message = '') => {
        this.progress = { percent: Math.min(100, Math.max(0, Number(percent) || 0)), message: String(message) };
      },
    };
  }

  async run() {
    const deadlineMs = timestampMs(this.lease.attemptDeadline);
    if (deadlineMs !== null) {
      this.stopTimers.push(timerAt(deadlineMs, () => this.abort('deadline', 'the attempt deadline passed')));
    }
    this.scheduleHeartbeat();
    let outcome;
    try {
      const handler = this.worker.handlers[this.task.kind];
      if (typeof handler !== 'function') {
        throw new TaskError('UNIMPLEMENTED', `this worker has no handler for ${JSON.stringify(this.task.kind)}`);
      }
      outcome = { output: toPayload((await handler(this.context())) ?? null) };
    } catch (error) {
      outcome = { error: statusOf(error) };
    }
    this.stopBackground();
    if (this.abandoned) return;
    const why = this.controller.signal.reason?.why;
    if (why === 'lease-lost') return; // the server no longer takes an outcome for this attempt
    if (why === 'cancelled') {
      outcome = { error: { code: grpc.status.CANCELLED, message: 'cancelled', details: [] } };
    } else if (why === 'deadline' && !outcome.output) {
      const info = errorInfoAny({ reason: 'ATTEMPT_TIMEOUT', domain: ERROR_DOMAIN });
      outcome = { error: { code: grpc.status.DEADLINE_EXCEEDED, message: 'the attempt deadline passed', details: [info] } };
    }
    await this.complete(outcome);
  }

  scheduleHeartbeat() {
    if (this.renewing) this.heartbeatTimer = setTimeout(() => this.heartbeat(), this.heartbeatEveryMs);
  }

  /** Renews the lease; a failed call is not a lost lease, unless the lease has run out meanwhile. */
  async heartbeat() {
    this.worker.emit('heartbeat', { taskId: this.task.id, token: this.token });
    const sentAtMs = Date.now();
    try {
      const timeoutMs = Math.max(1_000, this.heartbeatEveryMs);
      const response = await this.worker.unary('Heartbeat', { token: this.token, progress: this.progress }, timeoutMs);
      if (!this.renewing) return; // the handler returned meanwhile
      this.renewedAtMs = sentAtMs;
      if (response.cancelRequested) this.abort('cancelled', 'the task was cancelled');
    } catch (error) {
      if (!this.renewing) return;
      const lost = error.code === grpc.status.FAILED_PRECONDITION && reasonOf(error) === 'LEASE_LOST';
      if (lost || Date.now() >= this.renewedAtMs + this.leaseMs) {
        this.renewing = false;
        this.abort('lease-lost', lost ? `the lease was lost: ${error.details}` : 'the lease expired unrenewed');
        return;
      }
      this.worker.emit('warning', error);
    }
    this.scheduleHeartbeat();
  }

  /** Completes the attempt, retrying while the server is unreachable. */
  async complete(outcome) {
    const giveUpAt = Date.now() + COMPLETE_RETRY_BOUND_MS;
    let backoffMs = 100;
    for (;;) {
      try {
        const { task } = await this.worker.unary('Complete', { token: this.token, ...outcome }, 10_000);
        this.worker.emit('completed', task);
        return;
      } catch (error) {
        if (COMPLETE_RETRY_CODES.has(error.code) && Date.now() < giveUpAt) {
          await new Promise((resolve) => setTimeout(resolve, backoffMs));
          backoffMs = Math.min(backoffMs * 2, 5_000);
          continue;
        }
        if (outcome.output && error.code === grpc.status.INVALID_ARGUMENT) {
          // The output was refused (too large): the lease still holds, so fail the attempt instead.
          const info = errorInfoAny({ reason: 'OUTPUT_REFUSED', domain: ERROR_DOMAIN });
          outcome = { error: { code: grpc.status.OUT_OF_RANGE, message: `the output was refused: ${error.details}`, details: [info] } };
          continue;
        }
        this.worker.emit('warning', error);
        return;
      }
    }
  }
}

/** A worker of `handlers` ({ kind: async (context) => output }); call `run()` to start it. */
function createWorker(options) {
  return new Worker(options);
}

const USAGE =
  'usage: node worker.js ADDR HANDLERS.js [--concurrency N] [--lease-duration-ms MS] [--drain-timeout-ms MS] [--worker-id ID]';

function parseArguments(argv) {
  const positional = [];
  const options = {};
  const flags = {
    '--concurrency': 'concurrency',
    '--lease-duration-ms': 'leaseDurationMs',
    '--drain-timeout-ms': 'drainTimeoutMs',
    '--worker-id': 'workerId',
  };
  for (let i = 0; i < argv.length; i++) {
    const name = flags[argv[i]];
    if (!name) {
      positional.push(argv[i]);
      continue;
    }
    const value = argv[++i];
    if (value === undefined) return null;
    if (name === 'workerId') {
      options.workerId = value;
    } else {
      if (!/^\d+$/.test(value)) return null;
      options[name] = Number(value);
    }
  }
  if (positional.length !== 2) return null;
  return { target: positional[0], handlersPath: path.resolve(positional[1]), ...options };
}

async function main() {
  const options = parseArguments(process.argv.slice(2));
  if (!options) {
    console.error(USAGE);
    return 2;
  }
  const { handlersPath, ...workerOptions } = options;
  const worker = createWorker({ ...workerOptions, handlers: require(handlersPath) });
  const log = (fields) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...fields })}\n`);
  worker.on('lease', (lease) => log({ event: 'lease', task: lease.task.id, kind: lease.task.kind, attempt: lease.task.attempt }));
  worker.on('aborted', ({ taskId, why }) => log({ event: 'aborted', task: taskId, why }));
  worker.on('completed', (task) => log({ event: 'completed', task: task.id, state: task.state }));
  worker.on('released', ({ released }) => log({ event: 'released', released }));
  worker.on('warning', (error) => log({ event: 'warning', code: error.code, message: error.details ?? error.message }));
  for (const signal of ['SIGTERM', 'SIGINT']) process.once(signal, () => worker.stop());
  log({ event: 'started', kinds: worker.kinds, worker: worker.workerId });
  await worker.run();
  log({ event: 'stopped' });
  return 0;
}

// Before main runs: a handlers module may require('./worker') for TaskError.
module.exports = { AttemptAborted, TaskError, Worker, createWorker, statusOf };

if (require.main === module) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (error) => {
      console.error(`worker.js: ${error.details ?? error.message}`);
      process.exitCode = 1;
    },
  );
}
