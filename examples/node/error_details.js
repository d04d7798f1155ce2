'use strict';
/**
 * The few messages of google/rpc/error_details.proto that Vow uses
 * (ErrorInfo, RetryInfo, BadRequest), and the google.rpc.Status of the
 * `grpc-status-details-bin` trailer of a failed call, encoded and decoded
 * by protobufjs from Google's own .proto files (the google-proto-files
 * package). @grpc/proto-loader's package definitions serialize whole RPC
 * messages only, and these travel as the bytes of a google.protobuf.Any.
 *
 *     const { reasonOf } = require('./error_details');
 *     if (error.code === grpc.status.FAILED_PRECONDITION && reasonOf(error) === 'LEASE_LOST') …
 *
 * An Any is `{ type_url, value }` (snake case: protobufjs bundles the
 * well-known types with their proto names, whatever `keepCase` says).
 */

const path = require('node:path');

const { getProtoPath } = require('google-proto-files');
const protobuf = require('protobufjs');

const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';
const RETRY_INFO_TYPE = 'type.googleapis.com/google.rpc.RetryInfo';
const BAD_REQUEST_TYPE = 'type.googleapis.com/google.rpc.BadRequest';

/** google-proto-files' include root: the folder that holds google/. */
const PROTO_INCLUDE_DIR = path.dirname(getProtoPath());

const root = new protobuf.Root();
// Imports resolve against the include root, as protoc's -I would have them
// (google/protobuf/* come from the definitions protobufjs bundles).
root.resolvePath = (_origin, target) => path.join(PROTO_INCLUDE_DIR, target);
root.loadSync(['google/rpc/error_details.proto', 'google/rpc/status.proto']);
root.resolveAll();

const ErrorInfo = root.lookupType('google.rpc.ErrorInfo');
const RetryInfo = root.lookupType('google.rpc.RetryInfo');
const BadRequest = root.lookupType('google.rpc.BadRequest');
const Status = root.lookupType('google.rpc.Status');

/** Plain objects out of decoded messages: 64-bit integers as Numbers, unset fields at their defaults. */
const TO_OBJECT = { longs: Number, defaults: true };

function encode(type, object) {
  return Buffer.from(type.encode(type.fromObject(object)).finish());
}

/** An ErrorInfo as an Any; `metadata` is a plain object of strings. */
function errorInfoAny({ reason = '', domain = '', metadata = {} }) {
  const entries = Object.entries(metadata ?? {}).map(([key, value]) => [key, String(value)]);
  return { type_url: ERROR_INFO_TYPE, value: encode(ErrorInfo, { reason, domain, metadata: Object.fromEntries(entries) }) };
}

/** A RetryInfo asking for `delayMs` milliseconds before the next attempt, as an Any. */
function retryInfoAny(delayMs) {
  const seconds = Math.floor(delayMs / 1000);
  const nanos = Math.round((delayMs - seconds * 1000) * 1e6);
  return { type_url: RETRY_INFO_TYPE, value: encode(RetryInfo, { retryDelay: { seconds, nanos } }) };
}

function decodeErrorInfo(bytes) {
  const { reason, domain, metadata } = ErrorInfo.toObject(ErrorInfo.decode(bytes), TO_OBJECT);
  return { reason, domain, metadata };
}

function decodeRetryInfo(bytes) {
  const { retryDelay } = RetryInfo.toObject(RetryInfo.decode(bytes), TO_OBJECT);
  return { retryDelayMs: retryDelay ? retryDelay.seconds * 1000 + retryDelay.nanos / 1e6 : 0 };
}

function decodeBadRequest(bytes) {
  const { fieldViolations } = BadRequest.toObject(BadRequest.decode(bytes), TO_OBJECT);
  return { fieldViolations: fieldViolations.map(({ field, description }) => ({ field, description })) };
}

/**
 * The details Vow uses, out of a list of Any (`Task.error.details`, say):
 * `{ errorInfo, retryInfo, badRequest }`, each undefined when absent.
 * Throws when one of them does not decode.
 */
function decodeDetails(details = []) {
  const decoded = { errorInfo: undefined, retryInfo: undefined, badRequest: undefined };
  for (const any of details ?? []) {
    const typeUrl = any.type_url ?? any.typeUrl;
    const value = Buffer.from(any.value ?? []);
    if (typeUrl === ERROR_INFO_TYPE) decoded.errorInfo = decodeErrorInfo(value);
    if (typeUrl === RETRY_INFO_TYPE) decoded.retryInfo = decodeRetryInfo(value);
    if (typeUrl === BAD_REQUEST_TYPE) decoded.badRequest = decodeBadRequest(value);
  }
  return decoded;
}

/**
 * The rich error of a failed call, from its `grpc-status-details-bin`
 * trailer: `{ errorInfo, retryInfo, badRequest }` (all undefined when the
 * server sent none, or sent something that does not decode).
 */
function detailsOf(error) {
  const [trailer] = error?.metadata?.get?.('grpc-status-details-bin') ?? [];
  if (!trailer) return decodeDetails([]);
  try {
    return decodeDetails(Status.decode(Buffer.from(trailer)).details);
  } catch {
    return decodeDetails([]);
  }
}

/** The ErrorInfo reason of a failed call ('LEASE_LOST', …), or undefined. */
function reasonOf(error) {
  return detailsOf(error).errorInfo?.reason;
}

module.exports = {
  BAD_REQUEST_TYPE,
  ERROR_INFO_TYPE,
  RETRY_INFO_TYPE,
  decodeDetails,
  detailsOf,
  errorInfoAny,
  reasonOf,
  retryInfoAny,
};
