#!/usr/bin/env node
// Serves the widget page (this directory, at /) and the built npm package (npm/, at
// /trustfold/) on 127.0.0.1, for trying the widget without a bundler:
//
//   node npm/scripts/build.mjs                       # once: builds npm/dist and npm/pkg
//   node examples/widget/serve.mjs [--port 5173]
//
// then open the printed URL with ?server=…&token=…&payment=…&party=…&key=… (the
// README says where each comes from). The trustfold server must allow this origin:
// `trustfold-server --cors-origin http://127.0.0.1:5173`.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, extname, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const npm = resolve(here, "../../npm");
// Only what a page loads: the package's JS and its WebAssembly, and this directory.
const MOUNTS = [["/trustfold/dist/", join(npm, "dist")], ["/trustfold/pkg/", join(npm, "pkg")], ["/", here]];
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".wasm": "application/wasm", ".json": "application/json" };

/** Starts the server on `port` (0: any free one); resolves to `{ url, close() }`. */
export async function serveWidget(port = 0) {
  const server = createServer(async (req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    } catch {
      res.writeHead(400, { "content-type": "text/plain" });
      res.end("bad request: the path is not a valid URL path\n");
      return;
    }
    const [prefix, dir] = MOUNTS.find(([p]) => path.startsWith(p));
    let file = resolve(dir, `.${sep}${path.slice(prefix.length)}`);
    if (path.endsWith("/")) file = join(file, "index.html");
    if (!file.startsWith(dir + sep)) file = ""; // outside the mount: not found
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found\n");
    }
  });
  await new Promise((ok, fail) => server.once("error", fail).listen(port, "127.0.0.1", ok));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((ok) => server.close(ok)) };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf("--port");
  const port = i > 0 ? Number(process.argv[i + 1]) : 5173;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`serve: --port must be a port number, got ${process.argv[i + 1]}`);
    process.exit(2);
  }
  const { url } = await serveWidget(port);
  console.log(`payment widget on ${url}/  (Ctrl-C to stop)`);
}
