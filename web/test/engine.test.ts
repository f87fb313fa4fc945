// Unit tests of the protocol engine against a fake server (FakeWebSocket).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { ChatResponseSchema, EchoService, SayResponseSchema } from "../gen/example/echo/v1/echo_pb.js";
import { EndSchema, GoAwaySchema, ResetSchema, Code as PbCode } from "../gen/tether/v1/tether_pb.js";
import { Code, createClient, Metadata, TetherClient, TetherError } from "../src/index.js";
import { encodeFrame, encodeWindow, FLAG_ACK, FLAG_MORE, FrameType, parseFrames, ProtocolError } from "../src/frame.js";
import { decodeEnd, encodeOpen, headerCost } from "../src/envelope.js";
import { FakeWebSocket, sockets } from "./fakews.js";

let n = 0;
/** A client on a fresh fake socket, and the socket once it has sent something. */
async function setup(opts = {}) {
  const url = `ws://fake-${++n}`;
  const c = new TetherClient(url, { webSocket: FakeWebSocket, ...opts });
  const echo = createClient(EchoService, c);
  const sock = async (i = 0) => {
    for (;;) {
      const s = sockets.filter((x) => x.url === url)[i];
      if (s && s.sent.length > 0) return s;
      await new Promise((r) => setTimeout(r, 2));
    }
  };
  return { c, echo, sock };
}

const end = (id: number, code = 0, message = "") =>
  encodeFrame(FrameType.End, 0, id, toBinary(EndSchema, create(EndSchema, { status: { code: code as PbCode, message } })));
const sayRes = (id: number, text: string) => encodeFrame(FrameType.Message, 0, id, toBinary(SayResponseSchema, create(SayResponseSchema, { text })));

function closedOf(ws: FakeWebSocket): { code?: number; reason?: string } | undefined {
  return ws.closed;
}

async function rejectsWith(p: Promise<unknown>, code: Code): Promise<TetherError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof TetherError, String(e));
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail("call succeeded");
}

describe("frames", () => {
  test("encode and parse round-trip; several frames per message", () => {
    const a = encodeFrame(FrameType.Message, FLAG_MORE, 5, new Uint8Array([1, 2, 3]));
    const b = encodeWindow(5, 1024);
    const msg = new Uint8Array([...a, ...b]);
    const fs = parseFrames(msg);
    assert.equal(fs.length, 2);
    assert.deepEqual([fs[0].type, fs[0].flags, fs[0].streamId, [...fs[0].payload]], [3, 1, 5, [1, 2, 3]]);
    assert.equal(fs[1].type, FrameType.Window);
  });

  test("invalid frames are protocol errors", () => {
    const bad = [
      new Uint8Array(5), // truncated header
      encodeFrame(FrameType.Ping, 0, 1, new Uint8Array(8)), // PING on a stream
      encodeFrame(FrameType.Message, 0, 0), // MESSAGE on stream 0
      encodeFrame(FrameType.Window, 0, 1, new Uint8Array(3)),
      encodeFrame(FrameType.End, 2, 1),
      encodeFrame(FrameType.HalfClose, 0, 1, new Uint8Array(1)),
    ];
    for (const b of bad) assert.throws(() => parseFrames(b), ProtocolError);
    const big = encodeFrame(FrameType.Message, 0, 1);
    new DataView(big.buffer).setUint32(6, 65537);
    assert.throws(() => parseFrames(big), ProtocolError);
  });

  test("unknown frame types pass the parser", () => {
    assert.equal(parseFrames(encodeFrame(0x42, 7, 9, new Uint8Array(4)))[0].type, 0x42);
  });
});

describe("envelope", () => {
  test("OPEN matches protobuf-es's encoding, and END decodes", async () => {
    const md = new Metadata({ "x-b": ["1", "2"], "x-a": "v" });
    const open = encodeOpen("/p.S/M", md, 1234567);
    const { OpenSchema } = await import("../gen/tether/v1/tether_pb.js");
    const want = toBinary(OpenSchema, create(OpenSchema, {
      procedure: "/p.S/M",
      metadata: [{ key: "x-a", values: ["v"] }, { key: "x-b", values: ["1", "2"] }],
      timeoutMicros: 1234567n,
    }));
    assert.deepEqual(open, want);
    assert.equal(headerCost(open.length, md), open.length + 32 * 2 + 32 * 3);
    const e = decodeEnd(toBinary(EndSchema, create(EndSchema, {
      status: { code: PbCode.NOT_FOUND, message: "m", details: [{ typeUrl: "t", value: new Uint8Array([1]) }] },
      trailers: [{ key: "K", values: [] }],
    })));
    assert.equal(e.status.code, Code.NotFound);
    assert.equal(e.status.details[0].typeUrl, "t");
    assert.deepEqual(e.trailers.values("k"), [""]);
  });
});

describe("engine", () => {
  test("unary call: response, END, trailers", async () => {
    const { c, echo, sock } = await setup();
    const p = echo.say({ text: "hi" });
    const ws = await sock();
    ws.deliver(sayRes(1, "hi"), end(1));
    assert.equal((await p).text, "hi");
    c.close();
  });

  test("PING is answered with ACK and the same payload", async () => {
    const { c, echo, sock } = await setup();
    void echo.say({ text: "x" }).catch(() => {});
    const ws = await sock();
    ws.deliver(encodeFrame(FrameType.Ping, 0, 0, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])));
    const fs = await ws.waitFor((f) => f.some((x) => x.type === FrameType.Ping && x.flags === FLAG_ACK));
    assert.deepEqual([...fs.find((x) => x.type === FrameType.Ping)!.payload], [1, 2, 3, 4, 5, 6, 7, 8]);
    c.close();
  });

  test("unknown frame types are ignored", async () => {
    const { c, echo, sock } = await setup();
    const p = echo.say({ text: "hi" });
    const ws = await sock();
    ws.deliver(encodeFrame(0x0c, 3, 1, new Uint8Array(10)), sayRes(1, "hi"), end(1));
    assert.equal((await p).text, "hi");
    assert.equal(closedOf(ws), undefined);
    c.close();
  });

  test("a frame for a stream never opened closes with 4002", async () => {
    const { c, echo, sock } = await setup();
    const p = echo.say({ text: "hi" });
    const ws = await sock();
    ws.deliver(sayRes(7, "x"));
    await rejectsWith(p, Code.Internal);
    assert.equal(ws.closed?.code, 4002);
    assert.match(ws.closed?.reason ?? "", /never opened/);
    c.close();
  });

  for (const [name, opts, want] of [
    ["by default", {}, (1 << 20) - 65536],
    ["zero keeps the default", { streamWindow: 0 }, (1 << 20) - 65536],
    ["as set", { streamWindow: 256 << 10 }, (256 << 10) - 65536],
  ] as const) {
    test(`the window after OPEN: ${name}`, async () => {
      const { c, echo, sock } = await setup(opts);
      const chat = echo.chat();
      void chat.send({ text: "x" });
      const ws = await sock();
      const fs = await ws.waitFor((f) => f.some((x) => x.type === FrameType.Window && x.streamId === 1));
      const w = fs.find((x) => x.type === FrameType.Window && x.streamId === 1)!;
      assert.equal(new DataView(w.payload.buffer, w.payload.byteOffset).getUint32(0), want);
      c.close();
    });
  }

  test("a server sending beyond the window closes with 4002", async () => {
    const { c, echo, sock } = await setup({ streamWindow: 65536 });
    const chat = echo.chat();
    void chat.send({ text: "x" });
    const ws = await sock();
    const big = new Uint8Array(60000);
    ws.deliver(encodeFrame(FrameType.Message, FLAG_MORE, 1, big));
    assert.equal(closedOf(ws), undefined);
    // The fragment's 60016 bytes of credit go back on arrival (more than a
    // quarter of the window, so a WINDOW goes out): 65536 are available again.
    const fs = await ws.waitFor((f) => f.some((x) => x.type === FrameType.Window && x.streamId === 1 && x.payload[3] !== 0 || false));
    assert.ok(fs.some((x) => x.type === FrameType.Window));
    ws.deliver(encodeFrame(FrameType.Message, 0, 1, new Uint8Array(65536))); // costs 65552 > 65536
    await rejectsWith(chat.receive(), Code.Internal);
    assert.equal(ws.closed?.code, 4002);
    assert.match(ws.closed?.reason ?? "", /beyond its flow-control window/);
    c.close();
  });

  test("fragments are granted back on arrival, so messages larger than the window flow", async () => {
    const { c, echo, sock } = await setup({ streamWindow: 65536 });
    const chat = echo.chat();
    void chat.send({ text: "x" });
    const ws = await sock();
    const got = chat.receive();
    // 200 KB in fragments through a 64 KiB window: each fragment's credit
    // comes back before the message is complete.
    const msg = toBinary(ChatResponseSchema, create(ChatResponseSchema, { text: "big", payload: new Uint8Array(200000).fill(7) }));
    const windows = () => ws.frames().filter((x) => x.type === FrameType.Window && x.streamId === 1)
      .reduce((a, x) => a + new DataView(x.payload.buffer, x.payload.byteOffset).getUint32(0), 0);
    let used = 0;
    for (let off = 0; off < msg.length;) {
      const n = Math.min(20000, msg.length - off);
      await ws.waitFor(() => 65536 + windows() - used >= n + 16);
      used += n + 16;
      off += n;
      ws.deliver(encodeFrame(FrameType.Message, off < msg.length ? FLAG_MORE : 0, 1, msg.subarray(off - n, off)));
    }
    const m = await got;
    assert.equal(m?.payload.length, 200000);
    assert.equal(closedOf(ws), undefined);
    c.close();
  });

  test("END in the middle of a message closes with 4002", async () => {
    const { c, echo, sock } = await setup();
    const chat = echo.chat();
    void chat.send({ text: "x" });
    const ws = await sock();
    ws.deliver(encodeFrame(FrameType.Message, FLAG_MORE, 1, new Uint8Array(10)), end(1));
    await rejectsWith(chat.receive(), Code.Internal);
    assert.equal(ws.closed?.code, 4002);
    c.close();
  });

  test("RESET unprocessed is retried transparently; tether-attempt counts", async () => {
    const { c, echo, sock } = await setup();
    const p = echo.say({ text: "hi" });
    const ws = await sock();
    ws.deliver(encodeFrame(FrameType.Reset, 0, 1, toBinary(ResetSchema, create(ResetSchema, { status: { code: PbCode.RESOURCE_EXHAUSTED }, unprocessed: true }))));
    const fs = await ws.waitFor((f) => f.some((x) => x.type === FrameType.Open && x.streamId === 3));
    const open = fs.find((x) => x.type === FrameType.Open && x.streamId === 3)!;
    assert.ok(Buffer.from(open.payload).toString().includes("tether-attempt"));
    ws.deliver(sayRes(3, "hi"), end(3));
    assert.equal((await p).text, "hi");
    c.close();
  });

  test("a client stream whose requests were read is not retried after an unprocessed RESET", async () => {
    const { c, echo, sock } = await setup();
    const p = echo.collect([{ text: "a" }]);
    const ws = await sock();
    await ws.waitFor((f) => f.some((x) => x.type === FrameType.HalfClose));
    ws.deliver(encodeFrame(FrameType.Reset, 0, 1, toBinary(ResetSchema, create(ResetSchema, { status: { code: PbCode.UNAVAILABLE }, unprocessed: true }))));
    const err = await rejectsWith(p, Code.Unavailable);
    assert.ok(err.unprocessed);
    assert.equal(ws.frames().filter((x) => x.type === FrameType.Open).length, 1);
    c.close();
  });

  test("closing the client while it dials leaves no socket open", async () => {
    const { c, echo } = await setup();
    const p = echo.say({ text: "x" });
    c.close();
    await rejectsWith(p, Code.Canceled);
    await new Promise((r) => setTimeout(r, 20));
    for (const s of sockets.filter((x) => x.url === c.url)) assert.ok(s.closed, "socket left open");
  });

  test("stream slots: an aborted waiter passes its wake-up on", async () => {
    class Limited extends FakeWebSocket {
      static override upgradeHeaders = { "tether-max-concurrent-streams": "1" };
    }
    const { c, echo, sock } = await setup({ webSocket: Limited });
    const opens = (ws: FakeWebSocket) => ws.frames().filter((x) => x.type === FrameType.Open).map((x) => x.streamId);
    const a = echo.say({ text: "a" });
    const ws = await sock();
    await ws.waitFor((f) => f.some((x) => x.type === FrameType.Open));
    // b and c wait for the one slot; b gives up.
    const ab = new AbortController();
    const b = echo.say({ text: "b" }, { signal: ab.signal });
    const cc = echo.say({ text: "c" });
    await new Promise((r) => setTimeout(r, 20));
    ab.abort();
    await rejectsWith(b, Code.Canceled);
    // a ends: its slot goes to c (before, to b's dead waiter, and c waited
    // for the next stream to end).
    ws.deliver(sayRes(1, "a"), end(1));
    assert.equal((await a).text, "a");
    await ws.waitFor((f) => f.filter((x) => x.type === FrameType.Open).length === 2, 2000);
    const second = opens(ws)[1];
    ws.deliver(sayRes(second, "c"), end(second));
    assert.equal((await cc).text, "c");
    c.close();
  });

  test("RESET that is not unprocessed fails the call with its status", async () => {
    const { c, echo, sock } = await setup();
    const p = echo.say({ text: "hi" });
    const ws = await sock();
    ws.deliver(encodeFrame(FrameType.Reset, 0, 1, toBinary(ResetSchema, create(ResetSchema, { status: { code: PbCode.RESOURCE_EXHAUSTED, message: "too big" } }))));
    const err = await rejectsWith(p, Code.ResourceExhausted);
    assert.equal(err.rawMessage, "too big");
    c.close();
  });

  test("GOAWAY: streams above last_stream_id are retried on a new connection; the old one closes when idle", async () => {
    const { c, echo, sock } = await setup();
    const p1 = echo.say({ text: "one" });
    const ws = await sock();
    const p2 = echo.say({ text: "two" });
    await ws.waitFor((f) => f.some((x) => x.type === FrameType.Open && x.streamId === 3));
    ws.deliver(encodeFrame(FrameType.GoAway, 0, 0, toBinary(GoAwaySchema, create(GoAwaySchema, { lastStreamId: 1, code: PbCode.UNAVAILABLE, message: "bye" }))));
    const ws2 = await sock(1);
    ws2.deliver(sayRes(1, "two"), end(1));
    assert.equal((await p2).text, "two");
    assert.equal(closedOf(ws), undefined);
    ws.deliver(sayRes(1, "one"), end(1));
    assert.equal((await p1).text, "one");
    await ws.waitFor(() => ws.closed !== undefined);
    assert.equal(ws.closed?.code, 1000);
    c.close();
  });

  test("a silent server is declared dead after interval + timeout", async () => {
    const { c, echo, sock } = await setup({ pingIntervalMs: 50, pingTimeoutMs: 100 });
    const p = echo.say({ text: "hi" });
    await sock();
    await rejectsWith(p, Code.Unavailable);
    c.close();
  });

  test("refusal close codes fail calls with their code", async () => {
    for (const [close, code] of [[4400, Code.FailedPrecondition], [4401, Code.Unauthenticated], [4403, Code.PermissionDenied]] as const) {
      const { c, echo, sock } = await setup();
      const p = echo.say({ text: "hi" });
      const ws = await sock();
      ws.serverClose(close, "tether: no");
      const err = await rejectsWith(p, code);
      assert.equal(err.rawMessage, "tether: no");
      c.close();
    }
  });

  test("deadline: RESET deadline_exceeded is sent, timeout_micros travels in OPEN", async () => {
    const { c, echo, sock } = await setup();
    const p = echo.say({ text: "hi" }, { timeoutMs: 100 });
    const ws = await sock();
    await rejectsWith(p, Code.DeadlineExceeded);
    const fs = await ws.waitFor((f) => f.some((x) => x.type === FrameType.Reset));
    assert.equal(fs.find((x) => x.type === FrameType.Reset)!.payload[3], Code.DeadlineExceeded);
    assert.equal(fs.filter((x) => x.type === FrameType.HalfClose).length, 1);
    c.close();
  });

  test("cancel: RESET canceled, and nothing else after it", async () => {
    const { c, echo, sock } = await setup();
    const ac = new AbortController();
    const chat = echo.chat({ signal: ac.signal });
    await chat.send({ text: "x" });
    const ws = await sock();
    ac.abort();
    await rejectsWith(chat.receive(), Code.Canceled);
    await chat.send({ text: "y" }).catch(() => {});
    await chat.closeSend().catch(() => {});
    await new Promise((r) => setTimeout(r, 20));
    const fs = ws.frames().filter((x) => x.streamId === 1);
    assert.equal(fs[fs.length - 1].type, FrameType.Reset);
    assert.equal(fs.filter((x) => x.type === FrameType.HalfClose).length, 0);
    c.close();
  });

  test("a message over the limit fails locally and sends nothing", async () => {
    const { c, echo } = await setup({ maxMessageSize: 1000 });
    await rejectsWith(echo.say({ text: "x".repeat(2000) }), Code.ResourceExhausted);
    assert.equal(sockets.filter((s) => s.url === c.url).length, 0);
    c.close();
  });
});

describe("reconnect backoff", () => {
  test("delays between failed dials grow, jittered within ±50%", async () => {
    const times: number[] = [];
    class Refused extends FakeWebSocket {
      protected opens = false;
      constructor(url: string, protocols: string[]) {
        super(url, protocols);
        times.push(Date.now());
        setTimeout(() => this.serverClose(1006), 0);
      }
    }
    const c = new TetherClient("ws://refused", { webSocket: Refused, backoff: { initialMs: 20, multiplier: 2, maxMs: 1000 } });
    const echo = createClient(EchoService, c);
    await rejectsWith(echo.say({ text: "x" }, { timeoutMs: 1500 }), Code.DeadlineExceeded);
    c.close();
    assert.ok(times.length >= 4, `${times.length} dials`);
    // The n-th wait is at least half of 20 ms × 2^(n-1) (timers never fire early; 2 ms of slack for clock rounding).
    for (let i = 1; i < times.length; i++) {
      const gap = times[i] - times[i - 1];
      assert.ok(gap >= 0.5 * 20 * 2 ** (i - 1) - 2, `wait ${i}: ${gap} ms`);
    }
  });
});

describe("metadata", () => {
  test("keys are lower-cased, values kept in order, entries sorted", () => {
    const md = new Metadata([["B", "1"], ["a", "2"], ["b", "3"]]);
    assert.deepEqual(md.entries(), [["a", ["2"]], ["b", ["1", "3"]]]);
    assert.equal(md.get("B"), "1");
  });
});
