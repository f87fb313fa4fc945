// Starts the Go test server (web/testserver) for end-to-end tests.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The URLs the test server prints. */
export interface ServerURLs {
  url: string;
  auth: string;
  limit: string;
  proxied: string;
  http: string;
}

/** The repository root (web/ is one level below it; tests run from web/dist/test). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

let binary: string | undefined;

/** Builds the test server once per process. */
export function buildServer(): string {
  if (!binary) {
    binary = join(mkdtempSync(join(tmpdir(), "tether-web-")), "testserver");
    execFileSync("go", ["build", "-o", binary, "./web/testserver"], { cwd: repoRoot, stdio: "inherit" });
  }
  return binary;
}

/** A running test server; stop() ends it. */
export interface RunningServer extends ServerURLs {
  stop(): Promise<void>;
}

/** Starts the test server on 127.0.0.1 and waits for its URLs. */
export async function startServer(args: string[] = []): Promise<RunningServer> {
  const bin = buildServer();
  const p: ChildProcess = spawn(bin, args, { stdio: ["pipe", "pipe", "inherit"] });
  const rl = createInterface({ input: p.stdout! });
  const line = await new Promise<string>((res, rej) => {
    rl.once("line", res);
    p.once("exit", (c) => rej(new Error(`test server exited with ${c}`)));
  });
  rl.close();
  const urls = JSON.parse(line) as ServerURLs;
  return {
    ...urls,
    stop: () =>
      new Promise<void>((res) => {
        if (p.exitCode !== null) return res();
        p.once("exit", () => res());
        p.stdin!.end();
      }),
  };
}
