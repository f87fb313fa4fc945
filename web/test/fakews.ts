// A fake WebSocket for unit tests: records what the client sends and lets
// the test play the server.
import type { WebSocketLike } from "../src/conn.js";
import { encodeFrame, type Frame, parseFrames } from "../src/frame.js";

/** Every FakeWebSocket created, newest last. */
export const sockets: FakeWebSocket[] = [];

/** A WebSocket that never touches the network. */
export class FakeWebSocket implements WebSocketLike {
  binaryType = "blob";
  bufferedAmount = 0;
  protocol = "tether.v1";
  readyState = 0;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onopen: (() => void) | null = null;
  /** Every message sent, in order. */
  readonly sent: Uint8Array[] = [];
  /** The close code and reason the client closed with, if it did. */
  closed: { code?: number; reason?: string } | undefined;
  private waiters: (() => void)[] = [];
  /** Whether the handshake succeeds; a subclass sets false to refuse it. */
  protected opens = true;

  /** The 101's headers, as the ws package's "upgrade" event gives them. */
  static upgradeHeaders: Record<string, string> = {};
  private upgradeListeners: ((res: unknown) => void)[] = [];

  constructor(readonly url: string, readonly protocols: string[]) {
    sockets.push(this);
    const headers = (this.constructor as typeof FakeWebSocket).upgradeHeaders;
    setTimeout(() => {
      if (!this.opens) return;
      for (const f of this.upgradeListeners) f({ headers });
      this.readyState = 1;
      this.onopen?.();
    }, 0);
  }

  /** The ws package's event emitter, for "upgrade" only. */
  on(ev: string, f: (res: unknown) => void): void {
    if (ev === "upgrade") this.upgradeListeners.push(f);
  }

  send(data: Uint8Array): void {
    this.sent.push(data.slice());
    for (const w of this.waiters.splice(0)) w();
  }

  close(code?: number, reason?: string): void {
    if (this.closed) return;
    this.closed = { code, reason };
    this.readyState = 3;
  }

  /** Every frame sent so far. */
  frames(): Frame[] {
    return this.sent.flatMap((m) => parseFrames(m));
  }

  /** Waits until pred holds for the frames sent. */
  async waitFor(pred: (f: Frame[]) => boolean, ms = 5000): Promise<Frame[]> {
    const end = Date.now() + ms;
    while (!pred(this.frames())) {
      if (Date.now() > end) throw new Error("timed out waiting for frames");
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 20);
      });
    }
    return this.frames();
  }

  /** Delivers one message of frames from the "server". */
  deliver(...frames: Uint8Array[]): void {
    const n = frames.reduce((a, f) => a + f.length, 0);
    const msg = new Uint8Array(n);
    let o = 0;
    for (const f of frames) {
      msg.set(f, o);
      o += f.length;
    }
    this.onmessage?.({ data: msg.buffer });
  }

  /** The server closes the connection. */
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

export { encodeFrame };
