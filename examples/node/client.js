'use strict';
/**
 * A small Node client of the Vow task service (vow.v1.TaskService).
 *
 * The .proto files are loaded at run time, straight from the repository's
 * proto/ folder, with @grpc/proto-loader; nothing is generated.
 *
 *     const { VowClient, fromPayload } = require('./client');
 *     const vow = await VowClient.connect('127.0.0.1:50051');
 *     const task = await vow.submit('sleep', { ms: 600 });
 *     for await (const event of vow.watch(task.id)) {
 *       console.log(event.type, event.task?.revision, event.task?.state);
 *     }
 *     vow.close();
 *
 * Messages are plain objects with camelCase field names (`afterRevision`,
 * `cancelRequested`), enums as their names ('TASK_STATE_SUCCEEDED'), 64-bit
 * integers as decimal strings (`revision: '7'`) and every field present
 * (defaults; an unset message field is null). Task input and output
 * go through `toPayload`/`fromPayload`, which map plain JSON values to the
 * google.protobuf.Value inside a Payload and back.
 */

const { randomUUID } = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const { Backoff, sleep } = require('./retry');

/** The repository's proto/ folder: vow/v1/*.proto and the vendored google/rpc/status.proto. */
const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

const LOADER_OPTIONS = {
  // camelCase, as in the JSON mapping of protobuf (and grpcurl's output). It is also
  // what the well-known types bundled with protobufjs (google.protobuf.Value, …)
  // use whatever this option says, so keepCase: true would mix the two styles.
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

const TERMINAL_STATES = new Set(['TASK_STATE_SUCCEEDED', 'TASK_STATE_FAILED', 'TASK_STATE_CANCELLED']);

/**
 * Loads vow.v1 from `protoRoot` and returns the package object
 * (`.TaskService` and `.WorkerService` are the client constructors).
 */
function loadVow(protoRoot = PROTO_ROOT) {
  const files = ['vow/v1/task.proto', 'vow/v1/task_service.proto', 'vow/v1/worker_service.proto'];
  // google/rpc/*.proto resolve in protoRoot. google/protobuf/*.proto are not
  // files there: protobufjs bundles those well-known types, and proto-loader
  // warns that it did not find them on disk before falling back to the bundled
  // ones. That warning (and only that one) is noise here.
  const emitWarning = process.emitWarning;
  process.emitWarning = (warning, ...rest) => {
    if (typeof warning === 'string' && /^google\/protobuf\/\S+ not found in any of the include paths/.test(warning)) {
      return;
    }
    emitWarning.call(process, warning, ...rest);
  };
  let definition;
  try {
    definition = protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: [protoRoot] });
  } finally {
    process.emitWarning = emitWarning;
  }
  return grpc.loadPackageDefinition(definition).vow.v1;
}

/** A plain JSON value as a google.protobuf.Value. */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  switch (typeof value) {
    case 'number':
      return { numberValue: value };
    case 'string':
      return { stringValue: value };
    case 'boolean':
      return { boolValue: value };
    case 'object':
      if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
      return {
        structValue: { fields: Object.fromEntries(Object.entries(value).map(([key, item]) => [key, toValue(item)])) },
      };
    default:
      throw new TypeError(`a ${typeof value} is not a JSON value`);
  }
}

/** The plain JSON value of a decoded google.protobuf.Value. */
function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return Object.fromEntries(Object.entries(value.structValue.fields ?? {}).map(([key, item]) => [key, fromValue(item)]));
    case 'listValue':
      return (value.listValue.values ?? []).map(fromValue);
    default:
      return null;
  }
}

/** A JSON value becomes a JSON payload, a Buffer a binary one; undefined stays unset. */
function toPayload(value) {
  if (value === undefined) return null;
  if (Buffer.isBuffer(value)) return { binary: value, contentType: 'application/octet-stream' };
  return { json: toValue(value) };
}

/** The value of a Payload: JSON as plain values, binary as a Buffer, unset as null. */
function fromPayload(payload) {
  if (!payload) return null;
  if (payload.data === 'json') return fromValue(payload.json);
  if (payload.data === 'binary') return payload.binary;
  return null;
}

/** A gRPC deadline `ms` milliseconds from now (undefined: none). */
function deadlineIn(ms) {
  return ms === undefined || ms === null ? undefined : new Date(Date.now() + ms);
}

/** Calls a unary method with metadata and a deadline (a Date, or undefined); resolves with its response. */
function unary(stub, method, request, metadata, deadline) {
  return new Promise((resolve, reject) => {
    stub[method](request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

/**
 * Which methods of `service` a gRPC service config (its JSON text) marks
 * `waitForReady`, as a predicate on the method's name: the entry naming the
 * method wins over the one naming the service, which wins over a default
 * entry (no service). grpc-js 1.14 reads the field without applying it, so
 * VowClient sets it on each call.
 */
function waitForReadyOf(serviceConfig, service) {
  const byMethod = new Map();
  let byService;
  let byDefault;
  for (const methodConfig of JSON.parse(serviceConfig).methodConfig ?? []) {
    for (const name of methodConfig.name ?? []) {
      if (!name.service) byDefault = methodConfig.waitForReady;
      else if (name.service !== service) continue;
      else if (name.method) byMethod.set(name.method, methodConfig.waitForReady);
      else byService = methodConfig.waitForReady;
    }
  }
  return (method) => (byMethod.has(method) ? byMethod.get(method) : (byService ?? byDefault)) === true;
}

/**
 * One watch: an async iterable of WatchResponse objects
 * ({ type: 'WATCH_EVENT_TYPE_…', task }).
 *
 * Iteration ends when the server closes the stream with OK (a single-task
 * watch does right after the terminal change) and throws the gRPC error
 * (`code`, `details`, `metadata`) after the last message otherwise. A
 * single-task watch (`resumable`) whose stream breaks on a transient error
 * (see retry.js) is opened again after the last revision received, within
 * the same deadline: the server replays what was missed, or sends a
 * WATCH_EVENT_TYPE_RESYNC with the current task when it no longer has it.
 * `status` resolves with the final status either way. Leaving the loop
 * early (`break`) or `cancel()` cancels the call.
 */
class Watch {
  /** Messages buffered before the stream is paused (flow control then holds the server back). */
  static HIGH_WATER_MARK = 64;

  /**
   * `open(afterRevision)` starts one Watch call; `deadlineMs` is the
   * watch's deadline (ms since the epoch), which bounds its resumes too.
   */
  constructor(open, { afterRevision = '0', resumable = false, deadlineMs } = {}) {
    this.open = open;
    this.afterRevision = String(afterRevision);
    this.resumable = resumable;
    this.backoff = new Backoff(deadlineMs);
    this.cancelled = false;
    this.wake = null;
    this.status = new Promise((resolve) => {
      this.resolveStatus = resolve;
    });
    this.attach(open(this.afterRevision));
  }

  /** Makes `call` the current stream; events of the calls before it are ignored. */
  attach(call) {
    this.call = call;
    this.queue = [];
    this.ended = false;
    this.finalStatus = undefined;
    const current = () => this.call === call;
    call.on('status', (status) => {
      if (!current()) return;
      this.finalStatus = status;
      // Final unless the iterator resumes: a non-OK status of a resumable,
      // uncancelled watch is settled there.
      if (status.code === grpc.status.OK || this.cancelled || !this.resumable) this.resolveStatus(status);
      this.notify();
    });
    call.on('data', (response) => {
      if (!current()) return;
      this.queue.push(response);
      if (response.task) this.afterRevision = String(response.task.revision);
      if (this.queue.length >= Watch.HIGH_WATER_MARK) call.pause();
      this.notify();
    });
    // grpc-js ends the readable side for every status, OK or not.
    call.on('end', () => {
      if (!current()) return;
      this.ended = true;
      this.notify();
    });
    // A non-OK status also arrives as 'error'; it is rethrown from the iterator
    // (and a cancelled call must not crash the process for want of a listener).
    call.on('error', () => {});
  }

  notify() {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Stops the stream; the status becomes CANCELLED unless the server already ended it. */
  cancel() {
    this.cancelled = true;
    this.call.cancel();
  }

  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        if (this.queue.length > 0) {
          const response = this.queue.shift();
          if (this.queue.length < Watch.HIGH_WATER_MARK / 2) this.call.resume();
          this.backoff.reset();
          yield response;
          continue;
        }
        if (this.ended && this.finalStatus) {
          const status = this.finalStatus;
          if (status.code === grpc.status.OK) break;
          const pauseMs = this.resumable ? this.backoff.pauseAfter(status, { safe: true, cancelledByCaller: this.cancelled }) : null;
          if (pauseMs === null) {
            this.resolveStatus(status);
            const { code, details, metadata } = status;
            throw Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata });
          }
          await sleep(pauseMs);
          if (!this.cancelled) this.attach(this.open(this.afterRevision));
          continue;
        }
        await new Promise((resolve) => {
          this.wake = resolve;
        });
      }
    } finally {
      // No-op once the server has closed the stream.
      this.cancel();
    }
  }
}

/**
 * A client interceptor that sends `authorization: Bearer <token>` (a vowd API
 * key or JWT) with every call, streams included. An interceptor rather than
 * call credentials: grpc-js composes those with TLS channels only, and a
 * local vowd (or one behind a mesh sidecar) is reached in plaintext.
 */
function bearerInterceptor(token) {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

/** Client options of a stub: the token's interceptor, if a token is given. */
function stubOptions(token) {
  return token ? { interceptors: [bearerInterceptor(token)] } : {};
}

/**
 * Typed calls over one channel. `timeoutMs` options are gRPC deadlines in
 * milliseconds from now; they bound every attempt of a retried call and
 * the pauses between them (see retry.js for what is retried).
 */
class VowClient {
  /**
   * Opens a plaintext channel (unless `credentials` are given) to `address`
   * (host:port, or a target such as dns:///vow-headless.vow.svc:50051) and
   * waits until it is ready. `token` (an API key or JWT of a vowd with
   * `--auth-file`) goes with every call. `serviceConfig` is the JSON text of
   * a gRPC service config (deploy/grpc-service-config.json): round_robin
   * balancing, and waitForReady, so that a call made while no replica is
   * reachable waits for one within its deadline (set on each call by this
   * client: grpc-js does not apply it); its retryPolicy is turned off
   * ('grpc.enable_retries': 0), since this client retries by itself and two
   * layers of retries multiply. `channelOptions` go to grpc-js as they are.
   */
  static async connect(
    address,
    { readyTimeoutMs = 10_000, credentials = grpc.credentials.createInsecure(), protoRoot, token, serviceConfig, channelOptions = {} } = {},
  ) {
    const vow = loadVow(protoRoot);
    const options = { ...stubOptions(token), ...channelOptions };
    if (serviceConfig !== undefined) Object.assign(options, { 'grpc.service_config': serviceConfig, 'grpc.enable_retries': 0 });
    const stub = new vow.TaskService(address, credentials, options);
    await new Promise((resolve, reject) =>
      stub.waitForReady(deadlineIn(readyTimeoutMs), (error) => (error ? reject(error) : resolve())),
    );
    const waitForReady = serviceConfig === undefined ? undefined : waitForReadyOf(serviceConfig, 'vow.v1.TaskService');
    return new VowClient(stub, { waitForReady });
  }

  /** `waitForReady(method)` says which calls wait for a connection instead of failing at once. */
  constructor(stub, { waitForReady = () => false } = {}) {
    this.stub = stub;
    this.waitForReady = waitForReady;
    this.closed = false;
  }

  /** The metadata a call of `method` starts with: empty, waitForReady as the service config says. */
  metadataFor(method) {
    return new grpc.Metadata({ waitForReady: this.waitForReady(method) });
  }

  close() {
    this.closed = true;
    this.stub.close();
  }

  /**
   * Calls `method`, retrying as retry.js says (`safe`: the call changes
   * nothing when repeated) within `timeoutMs`. `request(leftMs)` builds each
   * attempt's request from the time left (undefined without a deadline).
   */
  async call(method, request, { timeoutMs, safe = true } = {}) {
    const deadlineMs = timeoutMs === undefined || timeoutMs === null ? undefined : Date.now() + timeoutMs;
    const backoff = new Backoff(deadlineMs);
    for (;;) {
      const leftMs = deadlineMs === undefined ? undefined : Math.max(0, deadlineMs - Date.now());
      try {
        const deadline = deadlineMs === undefined ? undefined : new Date(deadlineMs);
        return await unary(this.stub, method, request(leftMs), this.metadataFor(method), deadline);
      } catch (error) {
        const pauseMs = backoff.pauseAfter(error, { safe, cancelledByCaller: this.closed });
        if (pauseMs === null) throw error;
        await sleep(pauseMs);
      }
    }
  }

  /**
   * Enqueues a task; `options` are the other SubmitRequest fields (labels,
   * retry, ttl, …). Without an `idempotencyKey` it makes one up, as the Rust
   * and Python clients do, so that its own retries after a lost reply create
   * one task; pass your own to make your own resubmits safe too. Resolves
   * with the task.
   */
  async submit(kind, input, options = {}, { timeoutMs = 10_000 } = {}) {
    const request = { ...options, kind, input: toPayload(input), idempotencyKey: options.idempotencyKey || randomUUID() };
    return (await this.call('Submit', () => request, { timeoutMs })).task;
  }

  /** The current snapshot; never blocks on the task. */
  async get(id, { timeoutMs = 10_000 } = {}) {
    return (await this.call('Get', () => ({ id }), { timeoutMs })).task;
  }

  /**
   * Waits for the task to finish, at most `waitMs` (server side) and the call
   * deadline `timeoutMs`. Resolves with `{ task, done }`: when either bound
   * comes first the answer is OK with `done: false` and the latest snapshot.
   * A retry asks the server only for what is left of `waitMs`.
   */
  await(id, { waitMs, timeoutMs } = {}) {
    const waitEndMs = waitMs === undefined ? undefined : Date.now() + waitMs;
    return this.call('Await', () => ({ id, timeout: waitEndMs === undefined ? null : durationOf(waitEndMs - Date.now()) }), { timeoutMs });
  }

  /**
   * Waits for several tasks (`mode`: 'AWAIT_MODE_ALL' or 'AWAIT_MODE_ANY'),
   * bounded like `await`. Resolves with the AwaitManyResponse.
   */
  awaitMany(ids, { mode, waitMs, timeoutMs } = {}) {
    const waitEndMs = waitMs === undefined ? undefined : Date.now() + waitMs;
    const request = () => ({ ids, mode, timeout: waitEndMs === undefined ? null : durationOf(waitEndMs - Date.now()) });
    return this.call('AwaitMany', request, { timeoutMs });
  }

  /**
   * Submits a task and waits for it in one call: the call's deadline is the
   * task's, and a caller that goes away cancels it. Retried on UNAVAILABLE
   * only (the call was not served). Resolves with the terminal task.
   */
  async run(kind, input, options = {}, { timeoutMs } = {}) {
    const request = { ...options, kind, input: toPayload(input) };
    return (await this.call('Run', () => request, { timeoutMs, safe: false })).task;
  }

  /** Asks the task to stop; idempotent. Resolves with the task. */
  async cancel(id, reason = '', { timeoutMs = 10_000 } = {}) {
    return (await this.call('Cancel', () => ({ id, reason }), { timeoutMs })).task;
  }

  /** One page of tasks matching `filter` ({ states, kinds, labels, pageSize, pageToken }): { tasks, nextPageToken }. */
  list(filter = {}, { timeoutMs = 10_000 } = {}) {
    return this.call('List', () => filter, { timeoutMs });
  }

  /** Deletes a finished task (a running one too with `cancelIfRunning`); a repeat after a lost reply may find it gone (NOT_FOUND). */
  async delete(id, { cancelIfRunning = false, timeoutMs = 10_000 } = {}) {
    await this.call('Delete', () => ({ id, cancelIfRunning }), { timeoutMs });
  }

  /**
   * Watches one task: a snapshot first (or, with `afterRevision`, the changes
   * after it), then every change in revision order until the terminal one;
   * a broken stream resumes after the last revision received. `timeoutMs`
   * bounds the watching, resumes included, never the task.
   */
  watch(id, { afterRevision = 0, timeoutMs } = {}) {
    const deadline = deadlineIn(timeoutMs);
    const open = (after) => this.stub.Watch({ id, afterRevision: after }, this.metadataFor('Watch'), { deadline });
    return new Watch(open, { afterRevision, resumable: true, deadlineMs: deadline?.getTime() });
  }

  /** Watches the changes of every task matching `filter` ({ kinds, labels, states }); not resumed. */
  watchFiltered({ kinds = [], labels = {}, states = [] } = {}, { timeoutMs } = {}) {
    const deadline = deadlineIn(timeoutMs);
    return new Watch(() => this.stub.Watch({ kinds, labels, states }, this.metadataFor('Watch'), { deadline }));
  }
}

/** A google.protobuf.Duration of `ms` milliseconds (0 when negative). */
function durationOf(ms) {
  const whole = Math.max(0, Math.floor(ms));
  return { seconds: String(Math.floor(whole / 1000)), nanos: (whole % 1000) * 1e6 };
}

module.exports = {
  PROTO_ROOT,
  bearerInterceptor,
  stubOptions,
  TERMINAL_STATES,
  VowClient,
  Watch,
  fromPayload,
  fromValue,
  grpc,
  loadVow,
  toPayload,
  toValue,
  waitForReadyOf,
};
