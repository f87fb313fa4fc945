// The client: a connection manager with jittered reconnect backoff, and the
// four call kinds over bytes. createClient (typed.ts) puts protobuf-es
// types on top.
import { type ConnConfig, Connection, closeError, isPermanent, type WebSocketLike } from "./conn.js";
import { Code, TetherError } from "./errors.js";
import { isPortableKey, Metadata, type MetadataInit } from "./metadata.js";
import type { Stream } from "./conn.js";

/** The subprotocol of this version of the protocol. */
export const SUBPROTOCOL = "tether.v1";

/** A WebSocket constructor: the global one, or the ws package's. */
export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

/** Options of a TetherClient. Every limit has the Go client's default. */
export interface ClientOptions {
  /** WebSocket implementation; default globalThis.WebSocket, else the ws package (Node). */
  webSocket?: WebSocketConstructor;
  /** Receive window per stream (default 1 MiB, as the Go client's; zero or less keeps it; at least 64 KiB). */
  streamWindow?: number;
  /** Largest message sent or received (default 8 MiB). */
  maxMessageSize?: number;
  /** Largest metadata cost accepted (default 16 KiB). */
  maxHeaderBytes?: number;
  /** How often the client sends PING (default 10 s). */
  pingIntervalMs?: number;
  /** Silence past the interval after which the connection is dead (default 10 s). */
  pingTimeoutMs?: number;
  /** Bound of the WebSocket handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Reconnect backoff: first delay (default 100 ms), growth (1.6), cap (10 s); each delay is jittered ±50%. */
  backoff?: { initialMs?: number; multiplier?: number; maxMs?: number };
  /** Transparent retries of unprocessed calls (default 10). */
  maxUnprocessedRetries?: number;
  /** Called on each connection state change. */
  onStateChange?: (state: "connecting" | "ready" | "failed", err?: TetherError) => void;
}

/** Per-call options. */
export interface CallOptions {
  /** Cancels the call: RESET canceled goes to the server. */
  signal?: AbortSignal;
  /** Deadline relative to now, in ms; sent to the server as the call's timeout. */
  timeoutMs?: number;
  /** Request metadata. */
  headers?: MetadataInit;
  /** Receives the response headers. */
  onHeader?: (md: Metadata) => void;
  /** Receives the trailers. */
  onTrailer?: (md: Metadata) => void;
  /** Idempotency key for the call (tether-idempotency-key), kept across attempts. */
  idempotencyKey?: string;
}

/** What the client knows about a method: its procedure and retry safety. */
export interface MethodInfo {
  /** "/package.Service/Method". */
  procedure: string;
  /** "unary" | "server_streaming" | "client_streaming" | "bidi_streaming". */
  kind: "unary" | "server_streaming" | "client_streaming" | "bidi_streaming";
  /** Protobuf idempotency_level: 0 unknown, 1 NO_SIDE_EFFECTS, 2 IDEMPOTENT. */
  idempotency?: number;
}

interface Dialed {
  ws: WebSocketLike;
  headers: Record<string, string>;
}

function parseLimit(v: string | undefined): number {
  if (!v || !/^\d+$/.test(v)) return 0;
  const n = Number(v);
  return n > 0 && n <= 1 << 20 ? n : 0;
}

let wsModule: Promise<WebSocketConstructor> | undefined;

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const g = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (g) return g;
  // Node without a global WebSocket: the ws package (an optional dependency).
  wsModule ??= import("ws" as string).then((m: { default: WebSocketConstructor }) => m.default);
  return wsModule;
}

function randomKey(): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The call's own signal: aborted by the caller's signal or by its deadline. */
class CallContext {
  readonly ctrl = new AbortController();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly parent: AbortSignal | undefined;
  private readonly onParent = () => this.abort(new TetherError(Code.Canceled, "tether: call canceled", { cause: this.parent!.reason }));
  readonly deadline: number | undefined;

  constructor(opts: CallOptions) {
    this.parent = opts.signal;
    if (opts.timeoutMs !== undefined) {
      this.deadline = Date.now() + opts.timeoutMs;
      this.timer = setTimeout(() => this.abort(new TetherError(Code.DeadlineExceeded, "tether: deadline exceeded")), Math.max(0, opts.timeoutMs));
    }
    if (this.parent?.aborted) this.onParent();
    else this.parent?.addEventListener("abort", this.onParent, { once: true });
  }

  get signal(): AbortSignal {
    return this.ctrl.signal;
  }

  /** The error the call fails with once aborted. */
  get error(): TetherError {
    return TetherError.from(this.ctrl.signal.reason);
  }

  private abort(err: TetherError): void {
    if (!this.ctrl.signal.aborted) this.ctrl.abort(err);
  }

  /** The timeout to send in OPEN, in whole microseconds (0: none). */
  timeoutMicros(): number {
    if (this.deadline === undefined) return 0;
    return Math.max(1, Math.ceil((this.deadline - Date.now()) * 1000));
  }

  done(): void {
    clearTimeout(this.timer);
    this.parent?.removeEventListener("abort", this.onParent);
  }
}

/**
 * A bidirectional stream as the caller sees it: send requests, close the
 * sending side, iterate the responses.
 */
export interface RawStream {
  /** Sends one encoded message (waits for flow-control credit). */
  send(msg: Uint8Array): Promise<void>;
  /** Half-closes. */
  closeSend(): void;
  /** The next encoded response, or null at the end. */
  receive(): Promise<Uint8Array | null>;
  /** Resolves with the response headers. */
  header(): Promise<Metadata>;
  /** The trailers, once the stream has ended with END. */
  trailer(): Metadata | undefined;
  /** Cancels the stream (RESET canceled) unless it has ended. */
  cancel(reason?: string): void;
}

/** A client of one tether endpoint: many calls over one WebSocket at a time. */
export class TetherClient {
  readonly url: string;
  private readonly opts: ClientOptions;
  private conn: Connection | undefined;
  private dialing: Promise<Connection> | undefined;
  private failures = 0;
  private notBefore = 0;
  private closed = false;
  private readonly conns = new Set<Connection>();
  /** Counters, for tests and demos. */
  readonly stats = { connects: 0, dialFailures: 0 };

  constructor(url: string, opts: ClientOptions = {}) {
    this.url = url;
    this.opts = opts;
  }

  private config(headers: Record<string, string>): ConnConfig {
    const o = this.opts;
    const maxMessageSize = o.maxMessageSize ?? 8 << 20;
    return {
      streamWindow: Math.min(Math.max(o.streamWindow !== undefined && o.streamWindow > 0 ? o.streamWindow : 1 << 20, 65536), 1 << 30),
      maxMessageSize,
      maxPartialBytes: 4 * maxMessageSize,
      maxHeaderBytes: o.maxHeaderBytes ?? 16 << 10,
      pingIntervalMs: o.pingIntervalMs ?? 10000,
      pingTimeoutMs: o.pingTimeoutMs ?? 10000,
      peerMaxStreams: parseLimit(headers["tether-max-concurrent-streams"]),
      peerMaxHeaderBytes: parseLimit(headers["tether-max-header-bytes"]),
    };
  }

  private backoffDelay(): number {
    const b = this.opts.backoff ?? {};
    const base = Math.min((b.initialMs ?? 100) * (b.multiplier ?? 1.6) ** (this.failures - 1), b.maxMs ?? 10000);
    return base * (0.5 + Math.random()); // ±50%: clients cut together do not return together
  }

  private async dial(): Promise<Dialed> {
    const WS = this.opts.webSocket ?? (await defaultWebSocket());
    const ws = new WS(this.url, [SUBPROTOCOL]);
    ws.binaryType = "arraybuffer";
    const headers: Record<string, string> = {};
    // The ws package (Node) exposes the 101's headers; browsers do not.
    const emitter = ws as unknown as { on?: (ev: string, f: (...a: unknown[]) => void) => void };
    emitter.on?.("upgrade", (res: unknown) => {
      const h = (res as { headers?: Record<string, string> }).headers ?? {};
      for (const [k, v] of Object.entries(h)) headers[k.toLowerCase()] = String(v);
    });
    return new Promise<Dialed>((resolve, reject) => {
      let errText = "";
      const timer = setTimeout(() => {
        fail(new TetherError(Code.Unavailable, `tether: handshake with ${this.url} timed out`));
        try { ws.close(); } catch { /* closing */ }
      }, this.opts.handshakeTimeoutMs ?? 10000);
      const fail = (e: TetherError) => {
        clearTimeout(timer);
        ws.onclose = ws.onerror = null;
        (ws as unknown as { onopen: unknown }).onopen = null;
        reject(e);
      };
      (ws as unknown as { onopen: () => void }).onopen = () => {
        clearTimeout(timer);
        ws.onclose = ws.onerror = null;
        if (ws.protocol !== SUBPROTOCOL) {
          ws.close(1000, "");
          reject(new TetherError(Code.FailedPrecondition, `tether: server at ${this.url} did not accept subprotocol ${SUBPROTOCOL}`));
          return;
        }
        resolve({ ws, headers });
      };
      ws.onerror = (ev) => {
        errText = String((ev as { message?: string }).message ?? "");
      };
      ws.onclose = (ev) => {
        // Node's ws says "Unexpected server response: 401"; a browser sees 1006 only.
        const m = /Unexpected server response: (\d+)/.exec(errText);
        const status = m ? Number(m[1]) : 0;
        const code = status === 400 || status === 426 ? Code.FailedPrecondition
          : status === 401 ? Code.Unauthenticated
          : status === 403 ? Code.PermissionDenied
          : status === 404 ? Code.Unimplemented
          : 0;
        if (code) fail(new TetherError(code, `tether: handshake refused with HTTP ${status}`));
        else fail(new TetherError(Code.Unavailable, `tether: cannot connect to ${this.url} (${ev.code}${errText ? " " + errText : ""})`));
      };
    });
  }

  /** Resolves with a connection that can take new streams, dialing as needed. */
  private async acquire(signal: AbortSignal): Promise<Connection> {
    for (;;) {
      signal.throwIfAborted();
      if (this.closed) throw new TetherError(Code.Canceled, "tether: client closed");
      if (this.conn?.usable) return this.conn;
      this.dialing ??= this.connect();
      let conn: Connection;
      try {
        conn = await abortable(this.dialing, signal);
      } catch (e) {
        const err = TetherError.from(e);
        if (signal.aborted) throw signal.reason;
        if (isPermanent(err)) throw err;
        continue; // transient: the next attempt waits for its backoff
      }
      if (conn.usable) return conn;
    }
  }

  private async connect(): Promise<Connection> {
    try {
      const wait = this.notBefore - Date.now();
      if (wait > 0) await sleep(wait);
      this.opts.onStateChange?.("connecting");
      const d = await this.dial();
      if (this.closed) {
        d.ws.close(1000, "");
        throw new TetherError(Code.Canceled, "tether: client closed");
      }
      const cfg = this.config(d.headers);
      const conn: Connection = new Connection(d.ws, cfg, (err) => {
        this.conns.delete(conn);
        if (this.conn === conn) this.conn = undefined;
        if (isPermanent(err)) this.noteFailure();
      });
      this.conns.add(conn);
      this.conn = conn;
      this.stats.connects++;
      this.failures = 0;
      this.opts.onStateChange?.("ready");
      return conn;
    } catch (e) {
      const err = TetherError.from(e);
      this.stats.dialFailures++;
      this.noteFailure();
      this.opts.onStateChange?.("failed", err);
      throw err;
    } finally {
      this.dialing = undefined;
    }
  }

  private noteFailure(): void {
    this.failures++;
    this.notBefore = Date.now() + this.backoffDelay();
  }

  /** Closes every connection (1000); calls in progress fail with canceled. */
  close(): void {
    this.closed = true;
    for (const c of [...this.conns]) c.close(1000, "", new TetherError(Code.Canceled, "tether: client closed"));
    this.conns.clear();
    this.conn = undefined;
  }

  /** The metadata of an attempt: the caller's, validated, plus retry keys. */
  private metadata(m: MethodInfo, opts: CallOptions, attempt: number, key: string | undefined): Metadata {
    const md = new Metadata(opts.headers);
    for (const k of md.keys()) {
      if (!isPortableKey(k)) throw new TetherError(Code.InvalidArgument, `tether: metadata key ${JSON.stringify(k)} is not portable (a-z, 0-9, '-', '_', '.')`);
    }
    if (key !== undefined) md.set("tether-idempotency-key", key);
    if (attempt > 1) md.set("tether-attempt", String(attempt));
    return md;
  }

  /**
   * Opens a stream for method on a ready connection, retrying transparently
   * (up to maxUnprocessedRetries times, with a short random delay) when the
   * server refuses it as unprocessed before the first response.
   * `start` sends what the call sends up front; it is repeated on retries.
   */
  private async run<T>(
    m: MethodInfo,
    opts: CallOptions,
    ctx: CallContext,
    body: (s: Stream) => Promise<T>,
    replayable: () => boolean = () => true,
  ): Promise<T> {
    const key = opts.idempotencyKey ?? (m.idempotency === 1 ? undefined : randomKey());
    const maxUnprocessed = this.opts.maxUnprocessedRetries ?? 10;
    const safe = m.kind === "unary" && (m.idempotency === 1 || m.idempotency === 2);
    let attempt = 0;
    let unprocessed = 0;
    let policyAttempts = 0;
    for (;;) {
      attempt++;
      let stream: Stream | undefined;
      try {
        const conn = await this.acquire(ctx.signal);
        await conn.slot(ctx.signal);
        if (!conn.usable) throw new TetherError(Code.Unavailable, "tether: connection is draining", { unprocessed: true });
        stream = conn.open(m.procedure, this.metadata(m, opts, attempt, key), ctx.timeoutMicros());
        return await withAbort(body(stream), ctx, stream);
      } catch (e) {
        const err = ctx.signal.aborted ? ctx.error : TetherError.from(e);
        if (ctx.signal.aborted) throw err;
        if (err.unprocessed && unprocessed < maxUnprocessed && replayable()) {
          unprocessed++;
          await sleep(Math.random() * Math.min(1000, 5 * 2 ** unprocessed), ctx.signal).catch(() => { throw ctx.error; });
          continue;
        }
        if (safe && (err.code === Code.Unavailable || err.code === Code.Aborted) && ++policyAttempts < 3) {
          await sleep(this.retryDelay(policyAttempts), ctx.signal).catch(() => { throw ctx.error; });
          continue;
        }
        throw err;
      }
    }
  }

  private retryDelay(n: number): number {
    return Math.min(100 * 2 ** (n - 1), 1000) * (0.5 + Math.random());
  }

  private checkSize(msg: Uint8Array): void {
    const limit = this.opts.maxMessageSize ?? 8 << 20;
    if (msg.length > limit) throw new TetherError(Code.ResourceExhausted, `tether: message of ${msg.length} bytes exceeds the limit of ${limit}`);
  }

  /** A unary call over encoded messages. */
  async unary(m: MethodInfo, req: Uint8Array, opts: CallOptions = {}): Promise<Uint8Array> {
    this.checkSize(req);
    const ctx = new CallContext(opts);
    try {
      return await this.run(m, opts, ctx, async (s) => {
        s.send(req).catch((e) => s.reset(TetherError.from(e)));
        s.closeSend();
        return this.oneResponse(s, opts, "unary");
      });
    } finally {
      ctx.done();
    }
  }

  private async oneResponse(s: Stream, opts: CallOptions, kind: string): Promise<Uint8Array> {
    let res: Uint8Array | null;
    try {
      res = await s.receive();
      opts.onHeader?.(await s.headers());
      if (res === null) throw new TetherError(Code.Unimplemented, `tether: the server sent no response to a ${kind} call`);
      const extra = await s.receive();
      if (extra !== null) {
        const err = new TetherError(Code.Unimplemented, `tether: the server sent more than one response to a ${kind} call`);
        s.reset(kind === "unary" ? err : new TetherError(Code.Canceled, err.rawMessage));
        throw err;
      }
    } finally {
      if (s.trailer) opts.onTrailer?.(s.trailer);
    }
    return res;
  }

  /** A client-streaming call: sends every request, then half-closes and waits for the one response. */
  async clientStream(m: MethodInfo, reqs: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, opts: CallOptions = {}): Promise<Uint8Array> {
    const ctx = new CallContext(opts);
    try {
      // The requests are read once: once the first has been taken from
      // them, an unprocessed refusal is no longer retried (the Go client
      // keeps up to 256 KiB of them to re-send; this one does not).
      let taken = false;
      return await this.run(m, opts, ctx, async (s) => {
        for await (const r of reqs) {
          taken = true;
          await s.send(r);
          if (s.done) break;
        }
        s.closeSend();
        return this.oneResponse(s, opts, "client-streaming");
      }, () => !taken);
    } finally {
      ctx.done();
    }
  }

  /**
   * A server-streaming call: yields every response. Breaking out of the
   * loop cancels the call.
   */
  async *serverStream(m: MethodInfo, req: Uint8Array, opts: CallOptions = {}): AsyncGenerator<Uint8Array> {
    this.checkSize(req);
    const ctx = new CallContext(opts);
    let stream: Stream | undefined;
    try {
      // Retried transparently until the first response arrives.
      const first = await this.run(m, opts, ctx, async (s) => {
        stream = s;
        s.send(req).catch((e) => s.reset(TetherError.from(e)));
        s.closeSend();
        const r = await s.receive();
        opts.onHeader?.(await s.headers());
        return r;
      });
      const s = stream!;
      let msg = first;
      while (msg !== null) {
        yield msg;
        msg = await withAbort(s.receive(), ctx, s);
      }
    } finally {
      if (stream && !stream.done) stream.reset(new TetherError(Code.Canceled, "tether: stream closed by the client"));
      if (stream?.trailer) opts.onTrailer?.(stream.trailer);
      ctx.done();
    }
  }

  /** A bidirectional (or any) stream, opened at once. */
  async stream(m: MethodInfo, opts: CallOptions = {}): Promise<RawStream> {
    const ctx = new CallContext(opts);
    let s: Stream;
    try {
      // Retried only while it cannot be opened; once open, the caller owns it.
      s = await this.run(m, opts, ctx, async (st) => st);
    } catch (e) {
      ctx.done();
      throw e;
    }
    const onAbort = () => s.reset(ctx.error);
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    let headerSent = false;
    const finish = () => {
      ctx.signal.removeEventListener("abort", onAbort);
      ctx.done();
      if (s.trailer) opts.onTrailer?.(s.trailer);
    };
    return {
      send: async (msg) => {
        if (ctx.signal.aborted) throw ctx.error;
        await s.send(msg);
      },
      closeSend: () => s.closeSend(),
      receive: async () => {
        try {
          const r = await s.receive();
          if (!headerSent) {
            headerSent = true;
            opts.onHeader?.(await s.headers());
          }
          if (r === null) finish();
          return r;
        } catch (e) {
          finish();
          throw ctx.signal.aborted ? ctx.error : e;
        }
      },
      header: () => s.headers(),
      trailer: () => s.trailer,
      cancel: (reason = "tether: stream closed by the client") => {
        if (!s.done) s.reset(new TetherError(Code.Canceled, reason));
        finish();
      },
    };
  }
}

/** Rejects with signal's reason once it aborts. */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** Runs p; if the call's signal aborts first, resets the stream and rejects with the call's error. */
function withAbort<T>(p: Promise<T>, ctx: CallContext, s: Stream): Promise<T> {
  if (ctx.signal.aborted) {
    s.reset(ctx.error);
    return Promise.reject(ctx.error);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      s.reset(ctx.error);
      reject(ctx.error);
    };
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        ctx.signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        ctx.signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

export { closeError };
