'use strict';
/**
 * Example handlers for worker.js, one per remote kind (the property name):
 *
 *     vowd --remote-kind greet --remote-kind countdown &
 *     node worker.js 127.0.0.1:50051 handlers.js
 *     vow run greet '{"name": "Ada"}'
 *     vow run countdown '{"from": 5, "ms": 200}'
 *
 * A handler takes the attempt's context and returns the task's output
 * (plain JSON, or a Buffer), or throws to fail the attempt.
 */

const { setTimeout: sleep } = require('node:timers/promises');
const { TaskError } = require('./worker');

module.exports = {
  /** Greets `input.name`; a missing name is a final INVALID_ARGUMENT. */
  async greet({ input }) {
    if (typeof input?.name !== 'string') throw new TaskError('INVALID_ARGUMENT', 'input.name must be a string');
    return { greeting: `Hello, ${input.name}!` };
  },

  /** Counts down from `input.from` (default 3), one step every `input.ms` ms, reporting progress; stops when aborted. */
  async countdown({ input, signal, reportProgress }) {
    const from = input?.from ?? 3;
    for (let left = from; left > 0; left--) {
      reportProgress((100 * (from - left)) / from, `${left} to go`);
      await sleep(input?.ms ?? 1000, undefined, { signal }); // rejects (an AbortError) once aborted
    }
    return { counted: from };
  },
};
