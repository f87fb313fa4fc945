// The Chromium suite: runs in the page, against the Go test server that
// served it; reports to window.__results. Bundled by test-browser/run.mjs.
import { EchoService } from "../gen/example/echo/v1/echo_pb.js";
import { Code, createClient, TetherClient, TetherError } from "../src/index.js";

interface Result { name: string; ok: boolean; error?: string; ms: number; info?: unknown }
const results: Result[] = [];
const w = window as unknown as { __results: Result[]; __done: boolean; __bench: Record<string, number> };
w.__results = results;
w.__bench = {};

const params = new URLSearchParams(location.search);
const base = `ws://${location.host}`;
const proxied = params.get("proxied")!;

function check(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}

async function code(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    if (e instanceof TetherError) return e.code;
    throw e;
  }
}

async function run(name: string, fn: () => Promise<unknown>) {
  const t0 = performance.now();
  try {
    const info = await fn();
    results.push({ name, ok: true, ms: performance.now() - t0, info });
  } catch (e) {
    results.push({ name, ok: false, ms: performance.now() - t0, error: String(e instanceof Error ? e.stack ?? e.message : e) });
  }
}

const clients: TetherClient[] = [];
function client(url = base + "/rpc") {
  const c = new TetherClient(url, { backoff: { initialMs: 20 } });
  clients.push(c);
  return c;
}

async function main() {
  const c = client();
  const echo = createClient(EchoService, c);

  await run("unary", async () => {
    const res = await echo.say({ text: "hi" }, { headers: { "x-echo": "browser" } });
    check(res.text === "hi", "text");
  });
  await run("server stream", async () => {
    const got: number[] = [];
    for await (const m of echo.countdown({ count: 5 })) got.push(m.value);
    check(got.join() === "5,4,3,2,1", got.join());
  });
  await run("client stream", async () => {
    const res = await echo.collect([{ text: "a" }, { text: "b" }, { text: "c" }]);
    check(res.joined === "a b c" && res.count === 3, res.joined);
  });
  await run("bidi", async () => {
    const chat = echo.chat();
    for (const text of ["one", "two"]) {
      await chat.send({ text });
      check((await chat.receive())?.text === "echo: " + text, "echo");
    }
    await chat.closeSend();
    check((await chat.receive()) === null, "end");
  });
  await run("cancel with AbortSignal", async () => {
    const ac = new AbortController();
    const p = echo.say({ text: "slow", sleepMillis: 20000 }, { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    const got = await code(p);
    check(got === Code.Canceled, `got ${got}`);
  });
  await run("deadline", async () => {
    const got = await code(echo.say({ text: "slow", sleepMillis: 20000 }, { timeoutMs: 150 }));
    check(got === Code.DeadlineExceeded, `got ${got}`);
  });
  await run("1,000 concurrent calls on one socket", async () => {
    const res = await Promise.all(Array.from({ length: 1000 }, (_, i) => echo.say({ text: String(i) })));
    check(res.every((r, i) => r.text === String(i)), "texts");
    check(c.stats.connects === 1, `connects ${c.stats.connects}`);
  });
  await run("10 MiB server stream, slow consumer", async () => {
    let bytes = 0;
    let n = 0;
    for await (const m of echo.countdown({ count: 160, payload: new Uint8Array(64 << 10) })) {
      bytes += m.payload.length;
      if (++n % 16 === 0) await new Promise((r) => setTimeout(r, 20));
    }
    check(bytes === 10 << 20, `bytes ${bytes}`);
  });
  await run("reconnect through a cut connection", async () => {
    const pc = client(proxied);
    const pe = createClient(EchoService, pc);
    check((await pe.say({ text: "before" })).text === "before", "before");
    const chat = pe.chat();
    await chat.send({ text: "x" });
    await chat.receive();
    await fetch("/control/cut", { method: "POST" });
    const got = await code(chat.receive());
    check(got === Code.Unavailable, `stream on the cut connection: ${got}`);
    check((await pe.say({ text: "after" })).text === "after", "after");
    check(pc.stats.connects === 2, `connects ${pc.stats.connects}`);
  });
  await run("handshake refused for credentials: close 4401, unauthenticated", async () => {
    const e = createClient(EchoService, client(base + "/rpc-auth"));
    const got = await code(e.say({ text: "x" }));
    check(got === Code.Unauthenticated, `got ${got}`);
  });
  await run("handshake without tether.v1: close 4400 when no subprotocol was offered", async () => {
    const ws = new WebSocket(base + "/rpc");
    const ev = await new Promise<CloseEvent>((r) => (ws.onclose = r));
    check(ev.code === 4400, `close ${ev.code} ${ev.reason}`);
    return ev.reason;
  });
  await run("handshake offering only another subprotocol: close 4400", async () => {
    // The server selects the subprotocol the browser offered, only so that
    // the browser completes its handshake and reads the 4400.
    const ws = new WebSocket(base + "/rpc", ["tether.v0"]);
    const ev = await new Promise<CloseEvent>((r) => (ws.onclose = r));
    check(ev.code === 4400, `close ${ev.code} ${ev.reason}`);
    return ev.reason;
  });

  // Numbers for docs/BENCHMARKS.md.
  await run("bench: unary, concurrency 1", async () => {
    const n = 2000;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await echo.say({ text: "x" });
    w.__bench["unary c=1 calls/s"] = Math.round(n / ((performance.now() - t0) / 1000));
  });
  await run("bench: unary, concurrency 64", async () => {
    const n = 20000;
    let next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (next++ < n) await echo.say({ text: "x" });
    }));
    w.__bench["unary c=64 calls/s"] = Math.round(n / ((performance.now() - t0) / 1000));
  });
  await run("bench: server stream", async () => {
    const n = 100000;
    const t0 = performance.now();
    let k = 0;
    for await (const _ of echo.countdown({ count: n })) k++;
    check(k === n, `got ${k}`);
    w.__bench["server-stream msgs/s"] = Math.round(n / ((performance.now() - t0) / 1000));
  });
  for (const x of clients) x.close();
  w.__done = true;
}

main().catch((e) => {
  results.push({ name: "suite", ok: false, ms: 0, error: String(e) });
  w.__done = true;
});
