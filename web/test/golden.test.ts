// The golden cross-check: for the same calls, the TypeScript client puts
// byte-identical frames on the wire as the Go client
// (web/testdata/golden-frames.txt, written and checked by
// web/testserver/golden_test.go).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { EchoService } from "../gen/example/echo/v1/echo_pb.js";
import { createClient, TetherClient } from "../src/index.js";
import { encodeWindow, type Frame, FrameType } from "../src/frame.js";
import { FakeWebSocket, sockets } from "./fakews.js";
import { repoRoot } from "./server.js";

function golden(): Map<string, string[]> {
  const m = new Map<string, string[]>();
  let cur: string[] = [];
  for (const line of readFileSync(join(repoRoot, "web/testdata/golden-frames.txt"), "utf8").split("\n")) {
    if (line.startsWith("# ")) m.set(line.slice(2), (cur = []));
    else if (line) cur.push(line);
  }
  return m;
}

function hex(f: Frame): string {
  const h = new Uint8Array(10 + f.payload.length);
  h[0] = f.type;
  h[1] = f.flags;
  new DataView(h.buffer).setUint32(2, f.streamId);
  new DataView(h.buffer).setUint32(6, f.payload.length);
  h.set(f.payload, 10);
  return Buffer.from(h).toString("hex");
}

async function captured(call: (echo: ReturnType<typeof createClient<typeof EchoService>>) => void): Promise<string[]> {
  const c = new TetherClient("ws://golden", { webSocket: FakeWebSocket });
  const echo = createClient(EchoService, c);
  call(echo);
  while (sockets.length === 0 || sockets[sockets.length - 1].url !== "ws://golden" || sockets[sockets.length - 1].sent.length === 0) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const ws = sockets[sockets.length - 1];
  let granted = false;
  const frames = await ws.waitFor((fs) => {
    if (!granted && fs.some((f) => f.type === FrameType.Message && f.flags === 1)) {
      granted = true; // as the Go capture does: credit once the first fragment used the initial window
      ws.deliver(encodeWindow(1, 1 << 20));
    }
    return fs.some((f) => f.type === FrameType.HalfClose);
  });
  c.close();
  return frames.filter((f) => f.streamId === 1).map(hex);
}

const want = golden();

test("unary: frames identical to the Go client's", async () => {
  const got = await captured((echo) => void echo.say({ text: "hi" }, { headers: { "x-trace": "42" } }).catch(() => {}));
  assert.deepEqual(got, want.get("unary"));
});

test("unary: OPEN, WINDOW, MESSAGE and HALF_CLOSE leave in one WebSocket message", async () => {
  const c = new TetherClient("ws://one", { webSocket: FakeWebSocket });
  void createClient(EchoService, c).say({ text: "hi" }).catch(() => {});
  const ws = await (async () => {
    for (;;) {
      const s = sockets.find((x) => x.url === "ws://one");
      if (s && s.sent.length > 0) return s;
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(ws.sent.length, 1);
  assert.deepEqual(ws.frames().map((f) => f.type), [FrameType.Open, FrameType.Window, FrameType.Message, FrameType.HalfClose]);
  c.close();
});

test("server stream: frames identical to the Go client's", async () => {
  const got = await captured((echo) => {
    void (async () => {
      try {
        for await (const _ of echo.countdown({ count: 3 }, { idempotencyKey: "k1" })) break;
      } catch { /* closed */ }
    })();
  });
  assert.deepEqual(got, want.get("server-stream"));
});

test("client stream: frames identical to the Go client's", async () => {
  const got = await captured((echo) => void echo.collect([{ text: "a" }, { text: "b" }], { idempotencyKey: "k2" }).catch(() => {}));
  assert.deepEqual(got, want.get("client-stream"));
});

test("bidi with a fragmented message: frames identical to the Go client's", async () => {
  const got = await captured((echo) => {
    const chat = echo.chat({ idempotencyKey: "k3", headers: { "x-trace": "42" } });
    void chat.send({ text: "yo", payload: new Uint8Array(70000) }).catch(() => {});
    void chat.closeSend().catch(() => {});
  });
  assert.deepEqual(got, want.get("bidi"));
});
