// Shared helpers for the package's tests: the golden vectors, a static file server
// and a headless Chromium.
import { readdirSync, readFileSync, mkdtempSync, rmSync, existsSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

export const npmDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const rootDir = resolve(npmDir, "..");
export const vectorsDir = process.env.TRUSTFOLD_VECTORS ?? join(rootDir, "core", "tests", "vectors");

/** The raw text of top-level key `key` in a JSON object text (the exact bytes). */
export function rawMember(text, key) {
  let depth = 0;
  let i = 0;
  const n = text.length;
  const skipString = (j) => {
    for (j++; j < n; j++) {
      if (text[j] === "\\") j++;
      else if (text[j] === '"') return j + 1;
    }
    throw new Error("unterminated string");
  };
  while (i < n) {
    const c = text[i];
    if (c === '"') {
      const end = skipString(i);
      if (depth === 1 && JSON.parse(text.slice(i, end)) === key) {
        let j = end;
        while (/\s/.test(text[j])) j++;
        if (text[j] === ":") {
          j++;
          while (/\s/.test(text[j])) j++;
          const start = j;
          let d = 0;
          for (; j < n; j++) {
            const ch = text[j];
            if (ch === '"') { j = skipString(j) - 1; continue; }
            if (ch === "{" || ch === "[") d++;
            else if (ch === "}" || ch === "]") { if (d === 0) break; d--; }
            else if (ch === "," && d === 0) break;
          }
          return text.slice(start, j).trimEnd();
        }
      }
      i = end;
      continue;
    }
    if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") depth--;
    i++;
  }
  return undefined;
}

/**
 * Every golden vector in the vectors dir: `{name, history, head, key, verify, state}`
 * with `state` the exact compact JSON text (or "null"). Throws when there are none.
 */
export function loadVectors() {
  const names = existsSync(vectorsDir)
    ? readdirSync(vectorsDir).filter((f) => f.endsWith(".expected.json")).sort()
    : [];
  if (names.length === 0) {
    throw new Error(`no golden vectors in ${vectorsDir}: the contract tests need NAME.history.json + NAME.expected.json files`);
  }
  return names.map((f) => {
    const name = f.replace(/\.expected\.json$/, "");
    const text = readFileSync(join(vectorsDir, f), "utf8");
    const exp = JSON.parse(text);
    return {
      name,
      history: readFileSync(join(vectorsDir, `${name}.history.json`), "utf8"),
      head: exp.head == null ? undefined : JSON.stringify(exp.head),
      key: exp.key ?? undefined,
      verify: exp.verify,
      state: rawMember(text, "state"),
    };
  });
}

/**
 * What an implementation computes for a vector, given the package's API: the
 * `verify` outcome and the state JSON (the same function runs in Node and, as source,
 * in the browser page).
 */
export function computeOutcome(t, v) {
  const verify = t.verify(v.history, v.head, v.key);
  let state = "null";
  if (verify.ok) state = t.replayJson(v.history);
  const bytes = verify.ok ? t.replayJson(new TextEncoder().encode(v.history)) : "null";
  const at = verify.ok ? t.stateAtJson(v.history, verify.len) : "null";
  return { name: v.name, verify, state, bytesState: bytes, stateAt: at };
}

/** Asserts an outcome matches the vector byte for byte. */
export function assertOutcome(v, got) {
  assert.deepStrictEqual(got.verify, v.verify, `${v.name}: verify outcome`);
  assert.strictEqual(got.state, v.state, `${v.name}: state JSON bytes`);
  assert.strictEqual(got.bytesState, v.state, `${v.name}: state from Uint8Array input`);
  assert.strictEqual(got.stateAt, v.state, `${v.name}: stateAt(len)`);
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".css": "text/css",
};

/** Serves `mounts` (URL prefix -> directory) on a free local port. */
export async function serve(mounts, extra = {}) {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (extra[url.pathname]) {
      const [type, body] = extra[url.pathname]();
      res.writeHead(200, { "content-type": type });
      res.end(body);
      return;
    }
    for (const [prefix, dir] of Object.entries(mounts)) {
      if (!url.pathname.startsWith(prefix)) continue;
      let file = normalize(join(dir, decodeURIComponent(url.pathname.slice(prefix.length))));
      if (!file.startsWith(dir)) break;
      if (existsSync(file) && statSync(file).isDirectory()) file = join(file, "index.html");
      if (!existsSync(file)) break;
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(readFileSync(file));
      return;
    }
    res.writeHead(404);
    res.end("not found");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(r)) };
}

/** Headless Debian Chromium through playwright-core, with a fresh profile. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  const profile = mkdtempSync(join(tmpdir(), "trustfold-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
