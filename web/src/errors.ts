// Status codes and the error every failed call rejects with
// (docs/PROTOCOL.md, section 10).
import { Metadata } from "./metadata.js";

/** Status codes: gRPC's numbers, names and meanings. */
export enum Code {
  OK = 0,
  Canceled = 1,
  Unknown = 2,
  InvalidArgument = 3,
  DeadlineExceeded = 4,
  NotFound = 5,
  AlreadyExists = 6,
  PermissionDenied = 7,
  ResourceExhausted = 8,
  FailedPrecondition = 9,
  Aborted = 10,
  OutOfRange = 11,
  Unimplemented = 12,
  Internal = 13,
  Unavailable = 14,
  DataLoss = 15,
  Unauthenticated = 16,
}

const names = [
  "ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists",
  "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
  "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated",
];

/** The name of a code as the Go package prints it ("not_found"); codes outside 0-16 print as "code N". */
export function codeName(code: number): string {
  return names[code] ?? `code ${code}`;
}

/** A typed error detail: a google.protobuf.Any. */
export interface ErrorDetail {
  typeUrl: string;
  value: Uint8Array;
}

/**
 * TetherError is what a failed call rejects with: a code, a message, typed
 * details, and the response trailers (metadata) when the server sent any.
 * `unprocessed` says no application code on the server saw the call, so it
 * is safe to retry whatever the method.
 */
export class TetherError extends Error {
  /** The status code. */
  readonly code: Code;
  /** The status message as sent, without the code prefix. */
  readonly rawMessage: string;
  /** Typed details (google.protobuf.Any). */
  readonly details: ErrorDetail[];
  /** Trailers of the call, if it ended with END. */
  readonly metadata: Metadata;
  /** No application code on the server saw the call (safe to retry). */
  readonly unprocessed: boolean;

  constructor(code: Code, message: string, opts?: { details?: ErrorDetail[]; metadata?: Metadata; unprocessed?: boolean; cause?: unknown }) {
    super(`${codeName(code)}: ${message}`, opts?.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = "TetherError";
    this.code = code;
    this.rawMessage = message;
    this.details = opts?.details ?? [];
    this.metadata = opts?.metadata ?? new Metadata();
    this.unprocessed = opts?.unprocessed ?? false;
  }

  /** Converts anything thrown into a TetherError (unknown for foreign errors). */
  static from(e: unknown): TetherError {
    if (e instanceof TetherError) return e;
    if (e instanceof Error && e.name === "AbortError") return new TetherError(Code.Canceled, e.message, { cause: e });
    if (e instanceof Error && e.name === "TimeoutError") return new TetherError(Code.DeadlineExceeded, e.message, { cause: e });
    return new TetherError(Code.Unknown, e instanceof Error ? e.message : String(e), { cause: e });
  }
}

/** The code of err: OK for undefined/null, unknown for foreign errors. */
export function codeOf(err: unknown): Code {
  if (err === undefined || err === null) return Code.OK;
  return TetherError.from(err).code;
}
