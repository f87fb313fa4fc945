// End-to-end tests of the TypeScript client against the real Go server
// (web/testserver), in Node with the ws package.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { EchoService } from "../gen/example/echo/v1/echo_pb.js";
import { Code, createClient, Metadata, TetherClient, TetherError } from "../src/index.js";
import { type RunningServer, startServer } from "./server.js";

let srv: RunningServer;
const clients: TetherClient[] = [];

function newClient(url = srv.url, opts = {}): TetherClient {
  const c = new TetherClient(url, opts);
  clients.push(c);
  return c;
}

async function rejectsWith(p: Promise<unknown>, code: Code): Promise<TetherError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof TetherError, `want TetherError, got ${String(e)}`);
    assert.equal(e.code, code, `want code ${Code[code]}, got ${e.message}`);
    return e;
  }
  assert.fail(`want ${Code[code]}, call succeeded`);
}

before(async () => {
  srv = await startServer();
});
after(async () => {
  for (const c of clients) c.close();
  await srv.stop();
});

describe("the four call kinds", () => {
  test("unary with metadata, headers and trailers", async () => {
    const echo = createClient(EchoService, newClient());
    let header: Metadata | undefined;
    let trailer: Metadata | undefined;
    const res = await echo.say({ text: "hi" }, {
      headers: { "x-echo": ["a", "b"] },
      onHeader: (h) => (header = h),
      onTrailer: (t) => (trailer = t),
    });
    assert.equal(res.text, "hi");
    assert.deepEqual(header?.values("x-echo"), ["a", "b"]);
    assert.deepEqual(trailer?.values("x-echo-trailer"), ["a", "b"]);
    assert.equal(trailer?.get("echo-length"), "0");
  });

  test("server streaming", async () => {
    const echo = createClient(EchoService, newClient());
    const got: number[] = [];
    for await (const m of echo.countdown({ count: 5 })) got.push(m.value);
    assert.deepEqual(got, [5, 4, 3, 2, 1]);
  });

  test("client streaming", async () => {
    const echo = createClient(EchoService, newClient());
    async function* reqs() {
      for (const text of ["a", "b", "c"]) yield { text };
    }
    const res = await echo.collect(reqs());
    assert.equal(res.joined, "a b c");
    assert.equal(res.count, 3);
  });

  test("bidi streaming, interleaved", async () => {
    const echo = createClient(EchoService, newClient());
    const chat = echo.chat({ headers: { "x-echo": "chat" } });
    for (const text of ["one", "two", "three"]) {
      await chat.send({ text });
      const m = await chat.receive();
      assert.equal(m?.text, "echo: " + text);
    }
    assert.equal((await chat.header()).get("x-echo"), "chat");
    await chat.closeSend();
    assert.equal(await chat.receive(), null);
    assert.equal(chat.trailer()?.get("x-echo-trailer"), "chat");
  });

  test("typed errors with code, message and trailers", async () => {
    const echo = createClient(EchoService, newClient());
    const err = await rejectsWith(echo.say({ text: "x" }, { headers: { "x-fail": "1" } }), Code.NotFound);
    assert.equal(err.rawMessage, "no such thing: x");
    assert.equal(err.metadata.get("x-failed"), "yes");
  });

  test("a metadata key that is not portable fails locally", async () => {
    const echo = createClient(EchoService, newClient());
    await rejectsWith(echo.say({ text: "x" }, { headers: { "bad key": "1" } }), Code.InvalidArgument);
  });
});

describe("cancellation and deadlines", () => {
  test("AbortSignal cancels a call in flight", async () => {
    const echo = createClient(EchoService, newClient());
    const ac = new AbortController();
    const p = echo.say({ text: "slow", sleepMillis: 20000 }, { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    await rejectsWith(p, Code.Canceled);
    assert.equal((await echo.say({ text: "after" })).text, "after");
  });

  test("a deadline fails the call with deadline_exceeded", async () => {
    const echo = createClient(EchoService, newClient());
    await rejectsWith(echo.say({ text: "slow", sleepMillis: 20000 }, { timeoutMs: 200 }), Code.DeadlineExceeded);
  });

  test("breaking out of a server stream cancels it", async () => {
    const echo = createClient(EchoService, newClient());
    let n = 0;
    for await (const _ of echo.countdown({ count: 100000 })) if (++n === 3) break;
    assert.equal(n, 3);
    assert.equal((await echo.say({ text: "still fine" })).text, "still fine");
  });
});

describe("flow control and limits", () => {
  test("a 3 MiB message each way (fragments, credit beyond the window)", async () => {
    const echo = createClient(EchoService, newClient());
    const payload = new Uint8Array(3 << 20).map((_, i) => i % 251);
    const res = await echo.say({ text: "big", payload });
    assert.equal(res.payload.length, payload.length);
    assert.deepEqual(res.payload.subarray(0, 1000), payload.subarray(0, 1000));
    assert.deepEqual(res.payload.subarray(-1000), payload.subarray(-1000));
  });

  test("a 10 MiB server stream to a slow consumer", async () => {
    const echo = createClient(EchoService, newClient());
    const payload = new Uint8Array(64 << 10);
    let bytes = 0;
    let n = 0;
    for await (const m of echo.countdown({ count: 160, payload })) {
      bytes += m.payload.length;
      if (++n % 16 === 0) await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(bytes, 10 << 20);
  });

  test("1,000 concurrent calls on one socket", async () => {
    const c = newClient();
    const echo = createClient(EchoService, c);
    const res = await Promise.all(Array.from({ length: 1000 }, (_, i) => echo.say({ text: String(i) })));
    res.forEach((r, i) => assert.equal(r.text, String(i)));
    assert.equal(c.stats.connects, 1);
  });

  test("calls beyond the announced stream limit wait instead of being refused", async () => {
    const c = newClient(srv.limit);
    const echo = createClient(EchoService, c);
    const res = await Promise.all(Array.from({ length: 20 }, (_, i) => echo.say({ text: String(i), sleepMillis: 20 })));
    assert.equal(res.length, 20);
  });
});

describe("stream limit after a cancel", () => {
  test("a call opened right after a cancel, at the server's limit, succeeds (unprocessed refusals are retried)", async () => {
    const c = newClient(srv.limit); // MaxConcurrentStreams 4, announced
    const echo = createClient(EchoService, c);
    const slow = () => {
      const ac = new AbortController();
      const p = echo.say({ text: "slow", sleepMillis: 20000 }, { signal: ac.signal }).catch((e) => e);
      return { ac, p };
    };
    const running = [slow(), slow(), slow(), slow()];
    await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < 20; i++) {
      const victim = running.shift()!;
      victim.ac.abort();
      const fast = echo.say({ text: String(i) });
      assert.equal((await fast).text, String(i));
      assert.equal(((await victim.p) as TetherError).code, Code.Canceled);
      // The next slow call starts once the fast one is done, and gets
      // time to be running before the next round. (Started beside the
      // fast call, it waited for a slot in the client's queue whenever the
      // server refused one of the two, the server still counting the
      // canceled stream until its handler had returned; the queue is
      // first come, first served, so the slot the fast call gave back on
      // its refusal went to the slow call, and the fast call waited for a
      // slow one to end, 20 s.)
      running.push(slow());
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const r of running) r.ac.abort();
    await Promise.all(running.map((r) => r.p));
  });
});

describe("connections", () => {
  test("reconnects after the connection is cut", async () => {
    const c = newClient(srv.proxied);
    const echo = createClient(EchoService, c);
    assert.equal((await echo.say({ text: "before" })).text, "before");
    const chat = echo.chat();
    await chat.send({ text: "x" });
    await chat.receive();
    await fetch(srv.http + "/control/cut", { method: "POST" });
    await rejectsWith(chat.receive(), Code.Unavailable);
    assert.equal((await echo.say({ text: "after" })).text, "after");
    assert.equal(c.stats.connects, 2);
  });

  test("a refused handshake fails calls with its code", async () => {
    const echo = createClient(EchoService, newClient(srv.auth));
    await rejectsWith(echo.say({ text: "x" }), Code.Unauthenticated);
  });

  test("heartbeats keep an idle connection alive", async () => {
    const c = newClient(srv.url, { pingIntervalMs: 100, pingTimeoutMs: 300 });
    const echo = createClient(EchoService, c);
    await echo.say({ text: "a" });
    await new Promise((r) => setTimeout(r, 1000));
    await echo.say({ text: "b" });
    assert.equal(c.stats.connects, 1);
  });

  test("nothing listening: unavailable once the deadline passes", async () => {
    const echo = createClient(EchoService, newClient("ws://127.0.0.1:1/rpc", { backoff: { initialMs: 10 } }));
    await rejectsWith(echo.say({ text: "x" }, { timeoutMs: 300 }), Code.DeadlineExceeded);
  });
});
