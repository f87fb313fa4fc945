// The connection engine: one WebSocket, many streams (docs/PROTOCOL.md).
// JavaScript is single-threaded, so the Go engine's reader and writer
// goroutines become an onmessage handler and a writer that batches every
// frame queued in one task into as few WebSocket messages as the 1 MiB
// limit allows (flushed in a microtask).
import { decodeEnd, decodeGoAway, decodeHeaders, decodeReset, encodeOpen, encodeReset, headerCost } from "./envelope.js";
import { Code, TetherError } from "./errors.js";
import {
  encodeFrame, encodeWindow, FLAG_ACK, FLAG_MORE, FRAME_OVERHEAD, type Frame, FrameType, INITIAL_WINDOW,
  MAX_CREDIT, MAX_PAYLOAD, MAX_STREAM_ID, MAX_WS_MESSAGE, parseFrames, ProtocolError, typeName,
} from "./frame.js";
import { Metadata } from "./metadata.js";

/** The part of the WebSocket API the engine uses (browsers, Node 22+, the ws package). */
export interface WebSocketLike {
  binaryType: string;
  readonly bufferedAmount: number;
  readonly protocol: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** Close code a client uses for a protocol error it found (it cannot send 1002). */
export const CLOSE_CLIENT_PROTOCOL_ERROR = 4002;

/** Limits and timers of a connection; see ClientOptions for their meaning. */
export interface ConnConfig {
  streamWindow: number;
  maxMessageSize: number;
  maxPartialBytes: number;
  maxHeaderBytes: number;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  /** The server's announced MaxConcurrentStreams, 0 if unknown. */
  peerMaxStreams: number;
  /** The server's announced MaxHeaderBytes, 0 if unknown. */
  peerMaxHeaderBytes: number;
}

/** Stream data waits while the socket's buffer holds this much. */
const SEND_BUFFER_HIGH = 1 << 20;

/** The error of a connection closed by the peer with code and reason. */
export function closeError(code: number, reason: string): TetherError {
  switch (code) {
    case 4400:
      return new TetherError(Code.FailedPrecondition, reason || "tether: unsupported protocol version");
    case 4401:
      return new TetherError(Code.Unauthenticated, reason || "tether: unauthenticated");
    case 4403:
      return new TetherError(Code.PermissionDenied, reason || "tether: permission denied");
  }
  return new TetherError(Code.Unavailable, `tether: connection closed by peer (${code} ${reason})`);
}

/** Whether err came from one of the server's handshake refusals (4400, 4401, 4403). */
export function isPermanent(err: TetherError): boolean {
  return err.code === Code.FailedPrecondition || err.code === Code.Unauthenticated || err.code === Code.PermissionDenied;
}

function cutReason(s: string): string {
  const b = new TextEncoder().encode(s);
  if (b.length <= 120) return s;
  let n = 120;
  while (n > 0 && (b[n] & 0xc0) === 0x80) n--;
  return new TextDecoder().decode(b.subarray(0, n));
}

/** One WebSocket connection speaking tether.v1. */
export class Connection {
  readonly cfg: ConnConfig;
  private readonly ws: WebSocketLike;
  private readonly streams = new Map<number, Stream>();
  private nextId = 1;
  private out: Uint8Array[] = [];
  private outLen = 0;
  private flushQueued = false;
  private lastRecv = Date.now();
  private lastPing = Date.now();
  private timer: ReturnType<typeof setInterval> | undefined;
  private slotWaiters: (() => void)[] = [];
  private onEnd: ((err: TetherError) => void) | undefined;
  /** Bytes of messages being assembled on this connection. */
  partialBytes = 0;
  /** Set once the connection is closed: why. */
  err: TetherError | undefined;
  /** A GOAWAY arrived, or stream ids ran out: no new streams. */
  draining = false;
  /** Frames received and sent, for tests and stats. */
  readonly stats = { framesIn: 0, framesOut: 0, messagesOut: 0 };

  constructor(ws: WebSocketLike, cfg: ConnConfig, onEnd?: (err: TetherError) => void) {
    this.ws = ws;
    this.cfg = cfg;
    this.onEnd = onEnd;
    ws.onmessage = (ev) => this.onMessage(ev.data);
    ws.onclose = (ev) => this.fail(closeError(ev.code, ev.reason));
    ws.onerror = () => {};
    const tick = Math.max(10, Math.min(1000, cfg.pingIntervalMs / 2, cfg.pingTimeoutMs / 2));
    this.timer = setInterval(() => this.heartbeat(), tick);
  }

  /** Whether a new stream can be opened here (not closed, not draining). */
  get usable(): boolean {
    return !this.err && !this.draining;
  }

  /** The number of streams open on this connection. */
  get openStreams(): number {
    return this.streams.size;
  }

  private heartbeat(): void {
    if (this.err) return;
    const now = Date.now();
    if (now - this.lastRecv > this.cfg.pingIntervalMs + this.cfg.pingTimeoutMs) {
      // Dead peer: drop without a close frame (docs/PROTOCOL.md, section 11).
      this.fail(new TetherError(Code.Unavailable, `tether: no traffic from the server for ${now - this.lastRecv} ms`));
      try { this.ws.close(); } catch { /* already closing */ }
      return;
    }
    if (now - this.lastPing >= this.cfg.pingIntervalMs) {
      this.lastPing = now;
      const p = new Uint8Array(8);
      new DataView(p.buffer).setFloat64(0, now);
      this.queue(encodeFrame(FrameType.Ping, 0, 0, p));
    }
  }

  // ---- writer

  /** Queues a frame; every frame queued in this task leaves in one flush. */
  queue(f: Uint8Array): void {
    if (this.err) return;
    this.out.push(f);
    this.outLen += f.length;
    this.stats.framesOut++;
    if (this.outLen >= MAX_WS_MESSAGE) this.flush();
    else if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.flushQueued = false;
    if (this.err || this.out.length === 0) return;
    const frames = this.out;
    this.out = [];
    this.outLen = 0;
    let i = 0;
    while (i < frames.length) {
      let n = 0;
      let j = i;
      while (j < frames.length && (j === i || n + frames[j].length <= MAX_WS_MESSAGE)) n += frames[j++].length;
      let msg: Uint8Array;
      if (j === i + 1) msg = frames[i];
      else {
        msg = new Uint8Array(n);
        let o = 0;
        for (let k = i; k < j; k++) {
          msg.set(frames[k], o);
          o += frames[k].length;
        }
      }
      try {
        this.ws.send(msg);
        this.stats.messagesOut++;
      } catch (e) {
        this.fail(new TetherError(Code.Unavailable, `tether: send: ${String(e)}`, { cause: e }));
        return;
      }
      i = j;
    }
  }

  /** Resolves once the socket's send buffer is below its high-water mark. */
  async writable(): Promise<void> {
    while (!this.err && this.ws.bufferedAmount + this.outLen > SEND_BUFFER_HIGH) {
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  // ---- streams

  /**
   * Waits until a stream may be opened under the server's announced limit.
   * An aborted waiter leaves the queue, so the release it would have taken
   * wakes the next waiter instead (before, it was lost, and the next
   * waiter waited for another stream to end).
   */
  async slot(signal?: AbortSignal): Promise<void> {
    while (this.cfg.peerMaxStreams > 0 && this.streams.size >= this.cfg.peerMaxStreams && this.usable) {
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        };
        const onAbort = () => {
          const i = this.slotWaiters.indexOf(wake);
          if (i >= 0) this.slotWaiters.splice(i, 1);
          reject(signal!.reason);
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        this.slotWaiters.push(wake);
      });
      signal?.throwIfAborted();
    }
  }

  /**
   * Opens a stream: queues OPEN and the WINDOW beyond the initial 64 KiB.
   * Throws an unprocessed unavailable error when the connection cannot
   * take new streams (closed, draining, ids used up), and
   * resource_exhausted when the metadata is over the server's limit.
   */
  open(procedure: string, md: Metadata, timeoutMicros: number): Stream {
    if (this.err) throw new TetherError(Code.Unavailable, this.err.rawMessage, { unprocessed: true });
    if (this.draining || this.nextId > MAX_STREAM_ID) {
      this.draining = true;
      throw new TetherError(Code.Unavailable, "tether: connection is draining", { unprocessed: true });
    }
    const payload = encodeOpen(procedure, md, timeoutMicros);
    const limit = Math.min(this.cfg.peerMaxHeaderBytes || this.cfg.maxHeaderBytes, MAX_PAYLOAD);
    const cost = headerCost(payload.length, md);
    if (cost > limit) {
      const whose = this.cfg.peerMaxHeaderBytes ? "the server's announced limit" : "the limit";
      throw new TetherError(Code.ResourceExhausted, `tether: request metadata of ${cost} bytes exceeds ${whose} of ${limit}`);
    }
    const id = this.nextId;
    this.nextId += 2;
    const s = new Stream(this, id);
    this.streams.set(id, s);
    this.queue(encodeFrame(FrameType.Open, 0, id, payload));
    const extra = this.cfg.streamWindow - INITIAL_WINDOW;
    if (extra > 0) this.queue(encodeWindow(id, extra));
    return s;
  }

  /** Takes a finished stream out of the table. */
  remove(s: Stream): void {
    if (this.streams.get(s.id) !== s) return;
    this.streams.delete(s.id);
    const w = this.slotWaiters.shift();
    if (w) w();
    if (this.draining && this.streams.size === 0) this.close(1000, "");
  }

  // ---- reader

  private onMessage(data: unknown): void {
    if (this.err) return;
    this.lastRecv = Date.now();
    let msg: Uint8Array;
    if (data instanceof ArrayBuffer) msg = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) msg = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      this.protocolError(new ProtocolError("text WebSocket message"));
      return;
    }
    try {
      for (const f of parseFrames(msg)) {
        this.stats.framesIn++;
        this.handle(f, msg.length);
        if (this.err) return;
      }
    } catch (e) {
      this.protocolError(e instanceof ProtocolError ? e : new ProtocolError(String(e instanceof Error ? e.message : e)));
    }
  }

  private handle(f: Frame, msgLen: number): void {
    switch (f.type) {
      case FrameType.Ping:
        if (!(f.flags & FLAG_ACK)) this.queue(encodeFrame(FrameType.Ping, FLAG_ACK, 0, f.payload.slice()));
        return;
      case FrameType.GoAway:
        this.goAway(f.payload);
        return;
      case FrameType.Open:
        throw new ProtocolError(`OPEN for stream ${f.streamId} sent by the server`);
    }
    if (f.type < FrameType.Open || f.type > FrameType.GoAway) return; // unknown: ignored
    const s = this.streams.get(f.streamId);
    if (!s) {
      if (f.streamId >= this.nextId) throw new ProtocolError(`${typeName(f.type)} for stream ${f.streamId}, which was never opened`);
      return; // an ended stream (or an id below the highest): ignored
    }
    switch (f.type) {
      case FrameType.Headers:
        s.onHeaders(f.payload);
        return;
      case FrameType.Message:
        s.onMessage(f.payload, (f.flags & FLAG_MORE) !== 0, msgLen);
        return;
      case FrameType.HalfClose:
        return; // a client ignores HALF_CLOSE
      case FrameType.End:
        s.onEnd(f.payload);
        return;
      case FrameType.Reset:
        s.onReset(decodeReset(f.payload));
        return;
      case FrameType.Window:
        s.onWindow(new DataView(f.payload.buffer, f.payload.byteOffset, 4).getUint32(0));
        return;
    }
  }

  private goAway(payload: Uint8Array): void {
    if (this.draining && this.goawaySeen) return;
    this.goawaySeen = true;
    const g = decodeGoAway(payload);
    this.draining = true;
    for (const [id, s] of [...this.streams]) {
      if (id > g.lastStreamId) {
        s.fail(new TetherError(Code.Unavailable, g.message || "tether: server is going away", { unprocessed: true }), false);
      }
    }
    for (const w of this.slotWaiters.splice(0)) w();
    if (this.streams.size === 0) this.close(1000, "");
  }
  private goawaySeen = false;

  private protocolError(e: ProtocolError): void {
    const err = new TetherError(Code.Internal, e.message, { cause: e });
    this.close(CLOSE_CLIENT_PROTOCOL_ERROR, e.message, err);
  }

  /** Closes the connection with code and reason; its calls fail with err (unavailable by default). */
  close(code = 1000, reason = "", err?: TetherError): void {
    if (this.err) return;
    this.flush();
    this.fail(err ?? new TetherError(Code.Unavailable, "tether: connection closed"));
    try {
      this.ws.close(code, cutReason(reason));
    } catch {
      /* already closed */
    }
  }

  /** Ends the connection: every stream fails with err. Idempotent. */
  fail(err: TetherError): void {
    if (this.err) return;
    this.err = err;
    clearInterval(this.timer);
    this.out = [];
    this.outLen = 0;
    for (const s of [...this.streams.values()]) s.fail(err, false);
    this.streams.clear();
    for (const w of this.slotWaiters.splice(0)) w();
    this.onEnd?.(err);
  }
}

interface Queued {
  msg: Uint8Array;
  cost: number;
}

/**
 * One call's stream, client side: send with credit, receive with
 * reassembly and credit grants, headers, end, reset.
 */
export class Stream {
  readonly id: number;
  private readonly c: Connection;
  private sendCredit = INITIAL_WINDOW;
  private creditWaiter: (() => void) | undefined;
  private recvCredit: number;
  private unacked = 0;
  private assembly: Uint8Array[] = [];
  private assemblyLen = 0;
  private gotMessage = false;
  private readonly queue: Queued[] = [];
  private recvWaiter: (() => void) | undefined;
  private headerWaiters: (() => void)[] = [];
  /** Response headers, once known (empty if none came before the first message or END). */
  header: Metadata | undefined;
  /** Trailers, once END arrived. */
  trailer: Metadata | undefined;
  /** Set when the response side is over: null for END ok, else the error. */
  end: TetherError | null | undefined;
  /** The stream is over for sending (END, RESET either way, or closed). */
  done = false;
  halfClosed = false;

  constructor(c: Connection, id: number) {
    this.c = c;
    this.id = id;
    this.recvCredit = Math.max(c.cfg.streamWindow, INITIAL_WINDOW);
  }

  // ---- sending

  /**
   * Sends one message, fragmented within credit. The first fragment is
   * queued synchronously when credit allows, so a unary call's frames
   * leave in one WebSocket message.
   */
  send(msg: Uint8Array): Promise<void> {
    // Messages leave one after another: a message waiting for credit holds
    // back the ones sent after it, and the HALF_CLOSE.
    if (this.sending === 0 && !this.done && msg.length <= MAX_PAYLOAD && msg.length <= this.c.cfg.maxMessageSize &&
        this.sendCredit >= msg.length + FRAME_OVERHEAD) {
      // Fast path: one frame within credit, queued now, so that a unary
      // call's OPEN, WINDOW, MESSAGE and HALF_CLOSE leave in one message.
      this.sendCredit -= msg.length + FRAME_OVERHEAD;
      this.c.queue(encodeFrame(FrameType.Message, 0, this.id, msg));
      return Promise.resolve();
    }
    const p = this.sending === 0 ? this.sendNow(msg) : this.tail.then(() => this.sendNow(msg));
    this.track(p);
    return p;
  }

  private sending = 0;
  private tail: Promise<unknown> = Promise.resolve();

  private track(p: Promise<void>): void {
    this.sending++;
    const done = () => {
      this.sending--;
    };
    this.tail = p.then(done, done);
  }

  private async sendNow(msg: Uint8Array): Promise<void> {
    if (msg.length > this.c.cfg.maxMessageSize) {
      throw new TetherError(Code.ResourceExhausted, `tether: message of ${msg.length} bytes exceeds the limit of ${this.c.cfg.maxMessageSize}`);
    }
    let off = 0;
    do {
      if (this.done) return this.afterDone();
      const remaining = msg.length - off;
      const need = Math.min(remaining, 16384) + FRAME_OVERHEAD;
      while (this.sendCredit < need && !this.done) {
        await new Promise<void>((r) => (this.creditWaiter = r));
      }
      if (this.done) return this.afterDone();
      if (off > 0) await this.c.writable();
      if (this.done) return this.afterDone();
      const n = Math.min(remaining, MAX_PAYLOAD, this.sendCredit - FRAME_OVERHEAD);
      const more = off + n < msg.length;
      this.sendCredit -= n + FRAME_OVERHEAD;
      this.c.queue(encodeFrame(FrameType.Message, more ? FLAG_MORE : 0, this.id, msg.subarray(off, off + n)));
      off += n;
    } while (off < msg.length);
  }

  private afterDone(): void {
    // After END the client stops sending; the outcome is the receive side's.
    if (this.end) throw this.end;
  }

  /** Half-closes: no more messages from the client. */
  closeSend(): void {
    if (this.done || this.halfClosed) return;
    this.halfClosed = true;
    const hc = () => {
      if (!this.done) this.c.queue(encodeFrame(FrameType.HalfClose, 0, this.id));
    };
    if (this.sending === 0) hc();
    else void this.tail.then(hc);
  }

  /** Resets the stream (cancel, deadline, a rejected response) and fails it locally with err. */
  reset(err: TetherError): void {
    if (this.done) {
      if (this.end === undefined) this.finishRecv(err);
      return;
    }
    this.c.queue(encodeFrame(FrameType.Reset, 0, this.id, encodeReset(err.code, err.rawMessage)));
    this.fail(err, true);
  }

  onWindow(n: number): void {
    if (n > MAX_CREDIT - this.sendCredit) throw new ProtocolError("flow-control window over 2^31-1");
    this.sendCredit += n;
    const w = this.creditWaiter;
    this.creditWaiter = undefined;
    w?.();
  }

  // ---- receiving

  onHeaders(payload: Uint8Array): void {
    if (this.header || this.gotMessage) return;
    const limit = this.c.cfg.maxHeaderBytes;
    let md: Metadata | undefined;
    if (payload.length <= limit) {
      const h = decodeHeaders(payload);
      if (h.cost <= limit) md = h.md;
    }
    if (!md) {
      this.reset(new TetherError(Code.ResourceExhausted, `tether: response headers exceed the limit of ${limit} bytes`));
      return;
    }
    this.setHeader(md);
  }

  private setHeader(md: Metadata): void {
    if (this.header) return;
    this.header = md;
    for (const w of this.headerWaiters.splice(0)) w();
  }

  /** Resolves with the response headers (empty when none were sent). */
  async headers(): Promise<Metadata> {
    while (!this.header) {
      if (this.end !== undefined) return new Metadata();
      await new Promise<void>((r) => this.headerWaiters.push(r));
    }
    return this.header;
  }

  onMessage(p: Uint8Array, more: boolean, msgLen: number): void {
    const cost = p.length + FRAME_OVERHEAD;
    if (cost > this.recvCredit) throw new ProtocolError(`server sent ${cost - this.recvCredit} bytes beyond its flow-control window on stream ${this.id}`);
    this.recvCredit -= cost;
    this.gotMessage = true;
    this.setHeader(new Metadata());
    if (this.assemblyLen + p.length > this.c.cfg.maxMessageSize) {
      this.reset(new TetherError(Code.ResourceExhausted, `tether: received message of at least ${this.assemblyLen + p.length} bytes exceeds the limit of ${this.c.cfg.maxMessageSize}`));
      return;
    }
    if (more || this.assembly.length > 0) {
      if (more && this.c.partialBytes + p.length > this.c.cfg.maxPartialBytes) {
        this.reset(new TetherError(Code.ResourceExhausted, `tether: messages being received on this connection would take more than ${this.c.cfg.maxPartialBytes} bytes`));
        return;
      }
      this.assembly.push(p.slice());
      this.assemblyLen += p.length;
      this.c.partialBytes += p.length;
      if (more) {
        // A non-final fragment's credit goes back on arrival: a message
        // larger than the window must flow (docs/PROTOCOL.md, section 7).
        this.consumed(cost);
        return;
      }
      const msg = new Uint8Array(this.assemblyLen);
      let o = 0;
      for (const part of this.assembly) {
        msg.set(part, o);
        o += part.length;
      }
      this.c.partialBytes -= this.assemblyLen;
      this.assembly = [];
      this.assemblyLen = 0;
      this.push({ msg, cost });
      return;
    }
    // Copy small payloads out of a large WebSocket message, so that the
    // message is not kept alive by one frame.
    this.push({ msg: p.length * 2 < msgLen ? p.slice() : p, cost });
  }

  private push(q: Queued): void {
    this.queue.push(q);
    const w = this.recvWaiter;
    this.recvWaiter = undefined;
    w?.();
  }

  /** Returns credit for consumed bytes, with a WINDOW once a quarter of the window is consumed. */
  private consumed(cost: number): void {
    this.unacked += cost;
    if (this.unacked < this.c.cfg.streamWindow / 4 || this.end !== undefined || this.done) return;
    const n = this.unacked;
    this.unacked = 0;
    this.recvCredit += n;
    this.c.queue(encodeWindow(this.id, n));
  }

  onEnd(payload: Uint8Array): void {
    if (this.assembly.length > 0) throw new ProtocolError(`stream ${this.id}: END in the middle of a message`);
    const limit = this.c.cfg.maxHeaderBytes;
    let e: ReturnType<typeof decodeEnd> | undefined;
    if (payload.length <= limit) {
      e = decodeEnd(payload);
      if (e.cost > limit) e = undefined;
    }
    this.done = true;
    this.c.remove(this);
    if (!e) {
      this.finishRecv(new TetherError(Code.ResourceExhausted, `tether: status and trailers exceed the limit of ${limit} bytes`));
      return;
    }
    this.trailer = e.trailers;
    const st = e.status;
    this.finishRecv(st.code === Code.OK ? null : new TetherError(st.code, st.message, { details: st.details, metadata: e.trailers }));
  }

  onReset(err: TetherError): void {
    this.fail(err, false);
  }

  /** Fails the stream: queued messages are dropped, receives reject with err. */
  fail(err: TetherError, _local: boolean): void {
    this.queue.length = 0;
    this.c.partialBytes -= this.assemblyLen;
    this.assembly = [];
    this.assemblyLen = 0;
    this.done = true;
    this.c.remove(this);
    this.finishRecv(err);
  }

  private finishRecv(err: TetherError | null): void {
    if (this.end !== undefined) return;
    this.end = err;
    this.setHeader(this.header ?? new Metadata());
    const r = this.recvWaiter;
    this.recvWaiter = undefined;
    r?.();
    const w = this.creditWaiter;
    this.creditWaiter = undefined;
    w?.();
  }

  /** The next message, or null at a clean end (END ok); rejects with the call's error. */
  async receive(): Promise<Uint8Array | null> {
    for (;;) {
      const q = this.queue.shift();
      if (q) {
        this.consumed(q.cost);
        return q.msg;
      }
      if (this.end !== undefined) {
        if (this.end === null) return null;
        throw this.end;
      }
      await new Promise<void>((r) => (this.recvWaiter = r));
    }
  }
}
