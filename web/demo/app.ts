// The `tether demo web` page: a bidi chat with the generated client.
// Bundled into demo.js by `npm run build:demo` (committed, embedded by
// package webdemo).
import { EchoService } from "../gen/example/echo/v1/echo_pb.js";
import { createClient, TetherClient } from "../src/index.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const log = $<HTMLUListElement>("log");
const state = $<HTMLSpanElement>("state");
const form = $<HTMLFormElement>("form");
const input = $<HTMLInputElement>("text");

function line(who: "you" | "server" | "info", text: string) {
  const li = document.createElement("li");
  li.className = who;
  li.textContent = text;
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

const client = new TetherClient(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/rpc`, {
  onStateChange: (s, err) => (state.textContent = s + (err ? `: ${err.message}` : "")),
});
const echo = createClient(EchoService, client);

async function chat() {
  for (;;) {
    const stream = echo.chat();
    form.onsubmit = (ev) => {
      ev.preventDefault();
      if (!input.value) return;
      line("you", input.value);
      void stream.send({ text: input.value });
      input.value = "";
    };
    try {
      for await (const m of stream) line("server", m.text);
    } catch (e) {
      line("info", `stream ended: ${String(e)}; reopening`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

async function intro() {
  const res = await echo.say({ text: "hello from the browser" });
  line("info", `unary say: ${res.text}`);
  const values: number[] = [];
  for await (const m of echo.countdown({ count: 5 })) values.push(m.value);
  line("info", `server stream countdown: ${values.join(" ")}`);
  const sum = await echo.collect([{ text: "client" }, { text: "streaming" }, { text: "works" }]);
  line("info", `client stream collect: "${sum.joined}" (${sum.count} messages)`);
}

void intro().then(chat, (e) => line("info", String(e)));
const w = window as unknown as { __demo: { send(text: string): void } };
w.__demo = {
  send(text: string) {
    input.value = text;
    form.requestSubmit();
  },
};
