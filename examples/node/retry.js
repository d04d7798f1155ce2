'use strict';
/**
 * Retries of the calls that are safe to repeat, so that a client rides
 * through a rolling restart: the Rust client's and the Python package's
 * policy, in Node.
 *
 * Retried: UNAVAILABLE (vowd draining, with reason SHUTTING_DOWN, or
 * restarting; a connection that broke), and what proxies make of a stream
 * reset by a replica going away: CANCELLED (unless the caller cancelled),
 * INTERNAL and UNKNOWN. Such a call may have been served already, so only
 * calls whose repetition changes nothing take those (`safe`): Get, Await,
 * AwaitMany, List, Cancel, Delete, a Submit with its idempotency key, and a
 * Watch resumed after its last revision. Run takes UNAVAILABLE only, which
 * says the call was not served.
 *
 * At most RETRY_ATTEMPTS attempts, the first included, with exponential
 * backoff and full jitter (a random pause up to 100 ms, doubling to 2 s;
 * the server's google.rpc.RetryInfo instead when it sends one), and never
 * past the call's deadline: a pause that would end after it is not taken.
 */

const grpc = require('@grpc/grpc-js');

const { detailsOf } = require('./error_details');

const RETRY_ATTEMPTS = 8;
const INITIAL_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 2_000;

/** What a safe call is retried on; UNAVAILABLE alone for the others. */
const TRANSIENT_CODES = new Set([grpc.status.UNAVAILABLE, grpc.status.CANCELLED, grpc.status.INTERNAL, grpc.status.UNKNOWN]);

/**
 * Whether a failed call (an error or a status with a numeric `code`) is
 * worth another attempt. `cancelledByCaller`: the caller cancelled it (or
 * closed the client), so its CANCELLED is an answer, not an accident.
 */
function mayRepeat(error, { safe, cancelledByCaller = false }) {
  if (cancelledByCaller) return false;
  if (error?.code === grpc.status.UNAVAILABLE) return true;
  return safe && TRANSIENT_CODES.has(error?.code);
}

/** The pauses between the attempts of one call (or one watch), within its deadline. */
class Backoff {
  /** `deadlineMs`: the call's deadline in ms since the epoch, or undefined for none. */
  constructor(deadlineMs) {
    this.deadlineMs = deadlineMs;
    this.reset();
  }

  /** Starts afresh after progress: a watch that delivered a message. */
  reset() {
    this.attempts = 1;
    this.ceilingMs = INITIAL_BACKOFF_MS;
  }

  /** The pause before the next attempt after `error`, or null when none is to be made. */
  pauseAfter(error, { safe, cancelledByCaller = false }) {
    if (!mayRepeat(error, { safe, cancelledByCaller }) || this.attempts >= RETRY_ATTEMPTS) return null;
    const retryDelayMs = detailsOf(error).retryInfo?.retryDelayMs;
    const pauseMs = retryDelayMs ?? Math.random() * this.ceilingMs;
    if (this.deadlineMs !== undefined && Date.now() + pauseMs >= this.deadlineMs) return null;
    this.attempts += 1;
    this.ceilingMs = Math.min(this.ceilingMs * 2, MAX_BACKOFF_MS);
    return pauseMs;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

module.exports = { Backoff, INITIAL_BACKOFF_MS, MAX_BACKOFF_MS, RETRY_ATTEMPTS, TRANSIENT_CODES, mayRepeat, sleep };
