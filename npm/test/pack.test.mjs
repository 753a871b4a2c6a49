// `npm pack` the real package, install the tarball into a fresh Node project (ESM)
// and into a page built with Vite, and use it in both (the page in Chromium).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launchChromium, loadVectors, npmDir, serve } from "./support.mjs";

const vectors = loadVectors();
const ok = vectors.find((v) => v.verify.ok);
const work = mkdtempSync(join(tmpdir(), "trustfold-pack-"));
const npm = (args, cwd) => execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, encoding: "utf8" });

test.after(() => rmSync(work, { recursive: true, force: true }));

const out = npm(["pack", "--pack-destination", work, "--json"], npmDir);
const tarball = join(work, JSON.parse(out)[0].filename);

function project(name, files) {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(join(dir, f, ".."), { recursive: true });
    writeFileSync(join(dir, f), text);
  }
  npm(["install", "--offline", tarball], dir);
  return dir;
}

test("the packed tarball holds only the built package", () => {
  const files = JSON.parse(out)[0].files.map((f) => f.path).sort();
  assert.ok(files.includes("pkg/trustfold_wasm_bg.wasm") && files.includes("pkg/node/trustfold_wasm_bg.wasm") && files.includes("pkg/node/trustfold_wasm.js"));
  assert.ok(files.includes("dist/node.js") && files.includes("dist/web.js") && files.includes("dist/web.d.ts"));
  assert.ok(files.includes("README.md"), "the package says how to use it");
  assert.ok(!files.some((f) => f.startsWith("src/") || f.startsWith("test/") || f.includes("node_modules")));
});

test("installed into a fresh Node project (ESM), it verifies and folds", () => {
  const dir = project("node-esm", {
    "package.json": JSON.stringify({ name: "consumer", private: true, type: "module" }),
    "main.js": `
import { readFileSync } from "node:fs";
import { replayJson, verify, moneyAdd } from "trustfold";
const v = JSON.parse(readFileSync(process.argv[2], "utf8"));
const r = verify(v.history, v.head, v.key);
process.stdout.write(JSON.stringify({ ok: r.ok, state: replayJson(v.history), sum: moneyAdd("1.10", "2", "USD") }));
`,
  });
  const input = join(work, "vector.json");
  writeFileSync(input, JSON.stringify(ok));
  const res = JSON.parse(execFileSync(process.execPath, ["main.js", input], { cwd: dir, encoding: "utf8" }));
  assert.deepEqual(res, { ok: true, state: ok.state, sum: "3.10" });
});

test("installed into a TypeScript project, its declarations type-check (strict, libraries checked, no Node types)", () => {
  // A browser project's settings: ES2022 + DOM, no @types/node, skipLibCheck off, so
  // every declaration file the package's types reach is checked too.
  const dir = project("ts-consumer", {
    "package.json": JSON.stringify({ name: "ts-consumer", private: true, type: "module" }),
    "tsconfig.json": JSON.stringify({
      compilerOptions: {
        target: "ES2022", module: "ESNext", moduleResolution: "Bundler", lib: ["ES2022", "DOM"],
        types: [], strict: true, skipLibCheck: false, noEmit: true,
      },
      include: ["main.ts"],
    }),
    "main.ts": `
import {
  init, Client, PaymentFeed, PaymentViewFeed, replay, verify, view, allowedCommands, decide, formatMoney,
  moneyAllocate, isTrustfoldError, type PaymentState, type TrustfoldError, type VerifyResult,
} from "trustfold";
declare const token: string, serverKey: string, paymentId: string, buyerId: string;
export async function main(): Promise<void> {
  await init();
  const client = new Client({ baseUrl: "https://pay.example.com", token, serverKey });
  const feed = client.payment(paymentId);
  const state: PaymentState | undefined = await feed.sync();
  feed.live((s: PaymentState, seq: number) => console.log(s.status, seq), (err: TrustfoldError) => console.warn(err.code, err.retrying));
  if (state?.terms_hash) {
    const r = await client.sendCommand(paymentId, { type: "AgreeToTerms", terms_hash: state.terms_hash }, crypto.randomUUID(), state.version);
    console.log(r.version, r.events.map((e) => e.type));
  }
  const history = feed.history();
  const v: VerifyResult = verify(history);
  if (!v.ok) console.log(v.code, v.seq);
  console.log(replay(history).amount?.amount, view(history, ["lender"]).events.length);
  const can: string[] = allowedCommands(history, { party: buyerId, role: "buyer" });
  console.log(can, decide(history, { type: "Join" }, { command_id: crypto.randomUUID(), actor: { party: buyerId, role: "buyer" }, now: new Date().toISOString() }));
  console.log(formatMoney("1", "USD"), moneyAllocate("1.00", "USD", [1, 2]));
  try { replay("[]"); } catch (e) { if (isTrustfoldError(e)) console.log(e.code, e.seq); }
}
// Feeds come from a Client: their constructors are private to the declarations (an
// argument of type never would be taken by any public one).
export function feeds(client: Client, paymentId: string): boolean {
  // @ts-expect-error: PaymentFeed's constructor is private (get one from client.payment)
  const made = new PaymentFeed(null as never);
  // @ts-expect-error: PaymentViewFeed's constructor is private (get one from client.viewFeed)
  const view = new PaymentViewFeed(null as never);
  return client.payment(paymentId) instanceof PaymentFeed && client.viewFeed(paymentId) instanceof PaymentViewFeed && !!made && !!view;
}
`,
  });
  const tsc = join(npmDir, "node_modules", "typescript", "bin", "tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", dir], { cwd: dir, encoding: "utf8" });
  assert.equal(r.status, 0, `tsc found errors in the consumer or in the package's declarations:\n${r.stdout}${r.stderr}`);
});

test("installed into a Node TypeScript project (Node types, no DOM), its declarations type-check", () => {
  // A server project's settings: ES2022 without the DOM library, @types/node, NodeNext
  // resolution (the package's "node" condition), skipLibCheck off.
  const dir = project("ts-node-consumer", {
    "package.json": JSON.stringify({ name: "ts-node-consumer", private: true, type: "module" }),
    "tsconfig.json": JSON.stringify({
      compilerOptions: {
        target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", lib: ["ES2022"],
        types: ["node"], typeRoots: [join(npmDir, "node_modules", "@types")],
        strict: true, skipLibCheck: false, noEmit: true,
      },
      include: ["main.ts"],
    }),
    "main.ts": `
import { randomUUID } from "node:crypto";
import {
  init, Client, replay, verify, view, allowedCommands, decide, validatePolicy, formatMoney, moneyAllocate,
  isTrustfoldError, type PaymentState, type TrustfoldError, type VerifyResult, type HistoryInput, type InitInput,
} from "trustfold";
declare const token: string, serverKey: string, paymentId: string, buyerId: string, history: HistoryInput;
// Code shared with browsers passes the module's URL; Node ignores it.
const wasm: InitInput = new URL("https://cdn.example.com/trustfold_wasm_bg.wasm");
export async function main(): Promise<void> {
  await init(wasm);
  const client = new Client({ baseUrl: "http://127.0.0.1:8080", token, serverKey });
  const feed = client.payment(paymentId);
  const state: PaymentState | undefined = await feed.sync();
  feed.live((s: PaymentState, seq: number) => console.log(s.status, seq), (err: TrustfoldError) => console.warn(err.code));
  if (state?.terms_hash) {
    const r = await client.sendCommand(paymentId, { type: "AgreeToTerms", terms_hash: state.terms_hash }, randomUUID(), state.version);
    console.log(r.version);
  }
  const v: VerifyResult = verify(history);
  if (!v.ok) console.log(v.code, v.seq);
  console.log(replay(history).status, view(history, ["lender"]).events.length, validatePolicy("{}"));
  const can: string[] = allowedCommands(history, { party: buyerId, role: "buyer" });
  console.log(can, decide(history, { type: "Join" }, { command_id: randomUUID(), actor: { party: buyerId, role: "buyer" }, now: new Date().toISOString() }));
  console.log(formatMoney("1", "USD"), moneyAllocate("1.00", "USD", [1, 2]));
  try { replay("[]"); } catch (e) { if (isTrustfoldError(e)) console.log(e.code); }
}
`,
  });
  const tsc = join(npmDir, "node_modules", "typescript", "bin", "tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", dir], { cwd: dir, encoding: "utf8" });
  assert.equal(r.status, 0, `tsc found errors in the consumer or in the package's declarations:\n${r.stdout}${r.stderr}`);
});

test("installed into a Vite page, it runs in Chromium", async () => {
  const dir = project("vite-page", {
    "package.json": JSON.stringify({ name: "page", private: true, type: "module" }),
    "index.html": `<!doctype html><meta charset="utf-8"><title>page</title><script type="module" src="/main.js"></script>`,
    "main.js": `
import { init, replayJson, verify } from "trustfold";
const v = ${JSON.stringify({ history: ok.history, head: ok.head, key: ok.key })};
init().then(() => {
  window.result = { ok: verify(v.history, v.head, v.key).ok, state: replayJson(v.history) };
}, (e) => { window.result = { error: String(e) }; });
`,
  });
  execFileSync(process.execPath, [join(npmDir, "node_modules", "vite", "bin", "vite.js"), "build", "--logLevel", "error"], { cwd: dir, encoding: "utf8" });
  const assets = readdirSync(join(dir, "dist", "assets"));
  const wasm = assets.filter((f) => f.endsWith(".wasm"));
  assert.equal(wasm.length, 1, `vite emitted one .wasm asset: ${assets}`);
  // The browsers' size-optimised module, not Node's.
  const emitted = readFileSync(join(dir, "dist", "assets", wasm[0]));
  assert.ok(emitted.equals(readFileSync(join(npmDir, "pkg", "trustfold_wasm_bg.wasm"))), "the page ships pkg/trustfold_wasm_bg.wasm");
  const srv = await serve({ "/": join(dir, "dist") });
  const browser = await launchChromium();
  try {
    const tab = await browser.context.newPage();
    await tab.goto(`${srv.url}/`);
    await tab.waitForFunction(() => window.result !== undefined, null, { timeout: 20000 });
    const result = await tab.evaluate(() => window.result);
    assert.deepEqual(result, { ok: true, state: ok.state });
  } finally {
    await browser.close();
    await srv.close();
  }
});
