// The wasm module in headless Chromium: the golden vectors give the same bytes and
// verification outcomes as native Rust; calling before init() throws a clear error.
import { test } from "node:test";
import assert from "node:assert/strict";
import { assertOutcome, computeOutcome, launchChromium, loadVectors, npmDir, serve, vectorsDir } from "./support.mjs";

const vectors = loadVectors();

const page = `<!doctype html><meta charset="utf-8"><title>trustfold vectors</title>
<script type="module">
import * as t from "/pkg-root/dist/web.js";
const computeOutcome = ${computeOutcome.toString()};
window.run = async () => {
  let beforeInit = null;
  try { t.replay("[]"); } catch (e) { beforeInit = { name: e.name, code: e.code, message: e.message }; }
  // A module that instantiates but is not trustfold's (here an empty one) fails that
  // init() only: the right module still loads afterwards.
  let wrongModule = null;
  try { await t.init(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0])); } catch (e) { wrongModule = { code: e.code, message: e.message }; }
  let missing = null;
  try { await t.init("/no-such.wasm"); } catch (e) { missing = { code: e.code, message: e.message }; }
  await t.init();
  const vectors = await (await fetch("/vectors.json")).json();
  return { beforeInit, wrongModule, missing, results: vectors.map((v) => computeOutcome(t, v)) };
};
window.ready = true;
</script>`;

test(`golden vectors fold to the native bytes in Chromium (${vectors.length})`, async () => {
  const srv = await serve({ "/pkg-root/": npmDir }, {
    "/": () => ["text/html; charset=utf-8", page],
    "/vectors.json": () => ["application/json", JSON.stringify(vectors)],
  });
  const browser = await launchChromium();
  try {
    const tab = await browser.context.newPage();
    const errors = [];
    tab.on("pageerror", (e) => errors.push(e.message));
    await tab.goto(`${srv.url}/`);
    await tab.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
    const { beforeInit, wrongModule, missing, results } = await tab.evaluate(() => window.run());
    assert.deepEqual(errors, []);
    assert.equal(beforeInit?.code, "not_initialized");
    assert.match(beforeInit?.message ?? "", /await init\(\)/);
    assert.equal(wrongModule?.code, "init_failed");
    assert.match(wrongModule?.message ?? "", /not trustfold's module.*__wbindgen_start/);
    assert.equal(missing?.code, "init_failed");
    assert.match(missing?.message ?? "", /HTTP 404/);
    assert.equal(results.length, vectors.length);
    for (const [i, v] of vectors.entries()) assertOutcome(v, results[i]);
  } finally {
    await browser.close();
    await srv.close();
  }
});
