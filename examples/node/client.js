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

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

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

/** Calls a unary method and resolves with its response. */
function unary(stub, method, request, timeoutMs) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: deadlineIn(timeoutMs) }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/**
 * One Watch stream: an async iterable of WatchResponse objects
 * ({ type: 'WATCH_EVENT_TYPE_…', task }).
 *
 * Iteration ends when the server closes the stream with OK (a single-task
 * watch does right after the terminal change) and throws the gRPC error
 * (`code`, `details`) after the last message otherwise. `status` resolves
 * with the final status either way. Leaving the loop early (`break`) or
 * `cancel()` cancels the call.
 */
class Watch {
  /** Messages buffered before the stream is paused (flow control then holds the server back). */
  static HIGH_WATER_MARK = 64;

  constructor(call) {
    this.call = call;
    this.queue = [];
    this.ended = false;
    this.finalStatus = undefined;
    this.wake = null;
    this.status = new Promise((resolve) => {
      call.on('status', (status) => {
        this.finalStatus = status;
        this.notify();
        resolve(status);
      });
    });
    call.on('data', (response) => {
      this.queue.push(response);
      if (this.queue.length >= Watch.HIGH_WATER_MARK) call.pause();
      this.notify();
    });
    // grpc-js ends the readable side for every status, OK or not.
    call.on('end', () => {
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
    this.call.cancel();
  }

  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        if (this.queue.length > 0) {
          const response = this.queue.shift();
          if (this.queue.length < Watch.HIGH_WATER_MARK / 2) this.call.resume();
          yield response;
          continue;
        }
        if (this.ended && this.finalStatus) break;
        await new Promise((resolve) => {
          this.wake = resolve;
        });
      }
      if (this.finalStatus.code !== grpc.status.OK) {
        const { code, details, metadata } = this.finalStatus;
        throw Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata });
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
 * milliseconds from now.
 */
class VowClient {
  /**
   * Opens a plaintext channel (unless `credentials` are given) to `address`
   * (host:port) and waits until it is ready. `token` (an API key or JWT of
   * a vowd with `--auth-file`) goes with every call.
   */
  static async connect(address, { readyTimeoutMs = 10_000, credentials = grpc.credentials.createInsecure(), protoRoot, token } = {}) {
    const vow = loadVow(protoRoot);
    const stub = new vow.TaskService(address, credentials, stubOptions(token));
    await new Promise((resolve, reject) =>
      stub.waitForReady(deadlineIn(readyTimeoutMs), (error) => (error ? reject(error) : resolve())),
    );
    return new VowClient(stub);
  }

  constructor(stub) {
    this.stub = stub;
  }

  close() {
    this.stub.close();
  }

  /** Enqueues a task; `options` are the other SubmitRequest fields (labels, retry, ttl, …). Resolves with the task. */
  async submit(kind, input, options = {}, { timeoutMs = 10_000 } = {}) {
    const response = await unary(this.stub, 'Submit', { ...options, kind, input: toPayload(input) }, timeoutMs);
    return response.task;
  }

  /** The current snapshot; never blocks on the task. */
  async get(id, { timeoutMs = 10_000 } = {}) {
    return (await unary(this.stub, 'Get', { id }, timeoutMs)).task;
  }

  /**
   * Waits for the task to finish, at most `waitMs` (server side) and the call
   * deadline `timeoutMs`. Resolves with `{ task, done }`: when either bound
   * comes first the answer is OK with `done: false` and the latest snapshot.
   */
  await(id, { waitMs, timeoutMs } = {}) {
    const timeout = waitMs === undefined ? null : { seconds: String(Math.floor(waitMs / 1000)), nanos: (waitMs % 1000) * 1e6 };
    return unary(this.stub, 'Await', { id, timeout }, timeoutMs);
  }

  /** Asks the task to stop; idempotent. Resolves with the task. */
  async cancel(id, reason = '', { timeoutMs = 10_000 } = {}) {
    return (await unary(this.stub, 'Cancel', { id, reason }, timeoutMs)).task;
  }

  /**
   * Watches one task: a snapshot first (or, with `afterRevision`, the changes
   * after it), then every change in revision order until the terminal one.
   * `timeoutMs` bounds the watching, never the task.
   */
  watch(id, { afterRevision = 0, timeoutMs } = {}) {
    const request = { id, afterRevision: String(afterRevision) };
    return new Watch(this.stub.Watch(request, { deadline: deadlineIn(timeoutMs) }));
  }

  /** Watches the changes of every task matching `filter` ({ kinds, labels, states }). */
  watchFiltered({ kinds = [], labels = {}, states = [] } = {}, { timeoutMs } = {}) {
    return new Watch(this.stub.Watch({ kinds, labels, states }, { deadline: deadlineIn(timeoutMs) }));
  }
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
};
