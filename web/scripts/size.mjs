// Bundle size of the runtime, minified by esbuild and gzipped (level 9),
// without generated messages: the engine and client alone, and with the
// typed layer (createClient), which adds protobuf-es's binary codec that
// every application's generated messages need anyway.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const entries = {
  "engine and client (TetherClient)": `export { TetherClient } from "./src/client.js"; export * from "./src/errors.js"; export { Metadata } from "./src/metadata.js";`,
  "everything in index.ts (with createClient and protobuf-es's codec)": `export * from "./src/index.js";`,
};
const out = {};
for (const [name, contents] of Object.entries(entries)) {
  const r = await build({
    stdin: { contents, resolveDir: root, loader: "ts" },
    bundle: true, minify: true, format: "esm", target: "es2022", write: false, platform: "browser",
    external: ["ws"],
  });
  const code = r.outputFiles[0].contents;
  const gz = gzipSync(code, { level: 9 }).length;
  out[name] = { minified: code.length, gzipped: gz };
  console.log(`${name}: ${(code.length / 1024).toFixed(1)} KiB minified, ${(gz / 1024).toFixed(1)} KiB gzipped`);
}
