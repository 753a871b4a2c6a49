// The wasm module in Node: golden vectors byte for byte, errors, money, decide.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as t from "../dist/node.js";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assertOutcome, computeOutcome, loadVectors, rootDir } from "./support.mjs";

const vectors = loadVectors();

test(`golden vectors fold to the native bytes in Node (${vectors.length})`, () => {
  for (const v of vectors) assertOutcome(v, computeOutcome(t, v));
});

// Node loads the speed-optimised module (pkg/node/); browsers download the
// size-optimised one (pkg/, tested in Chromium by browser.test.mjs). Both are the same
// Rust: here the browsers' module runs in Node too, through its own glue.
test(`the browsers' size-optimised module gives the same bytes (${vectors.length} vectors)`, async () => {
  const web = await import("../pkg/trustfold_wasm.js");
  web.initSync({ module: readFileSync(join(rootDir, "npm", "pkg", "trustfold_wasm_bg.wasm")) });
  const browserModule = { verify: web.verify, replayJson: web.replay, stateAtJson: web.stateAt };
  for (const v of vectors) assertOutcome(v, computeOutcome(browserModule, v));
  const nodeWasm = readFileSync(join(rootDir, "npm", "pkg", "node", "trustfold_wasm_bg.wasm"));
  const browserWasm = readFileSync(join(rootDir, "npm", "pkg", "trustfold_wasm_bg.wasm"));
  assert.ok(!nodeWasm.equals(browserWasm), "two builds: Node's is optimised for speed");
});

test("stateAt stops at the sequence asked for: the state of the history's first records", () => {
  const v = loadVectors().find((x) => x.name === "em_happy_wire");
  const records = JSON.parse(v.history);
  assert.ok(records.length > 5);
  for (const k of [1, 2, Math.floor(records.length / 2), records.length - 1, records.length]) {
    const prefix = JSON.stringify(records.slice(0, k));
    assert.equal(t.stateAtJson(v.history, k), t.replayJson(prefix), `at seq ${k}`);
    assert.equal(t.stateAt(v.history, k).version, k);
  }
});

test("the package exports no way to swap the module", () => {
  assert.equal(t.isReady(), true);
  assert.equal(t.markReady, undefined);
  assert.equal(t.raw, undefined);
});

test("errors are TrustfoldErrors with the Rust code, message and seq", () => {
  assert.throws(() => t.replay("[]"), (e) => t.isTrustfoldError(e) && e.code === "invalid_history" && e.seq === 1 && e.message === "invalid history at seq 1: empty history");
  assert.throws(() => t.replay("[{"), (e) => e.code === "malformed_json");
  assert.throws(() => t.replay(42), (e) => e.code === "invalid_input");
  const tampered = vectors.find((v) => !v.verify.ok && v.verify.code === "chain_broken");
  if (tampered) {
    assert.throws(() => t.replay(tampered.history), (e) => e.code === "chain_broken" && typeof e.seq === "number");
  }
  assert.throws(() => t.validatePolicy("{}"), (e) => e.code === "invalid_policy");
  // Arguments the module reads itself (no serde in it): each refusal names the problem.
  const ok = vectors.find((v) => v.verify.ok);
  assert.throws(() => t.stateAt(ok.history, 1.5), (e) => e.code === "invalid_input" && e.message === "seq must be a whole number from 1, got 1.5");
  assert.throws(() => t.view(ok.history, ["buyer", 7]), (e) => e.code === "invalid_input" && /roles must be an array/.test(e.message));
  assert.throws(() => t.verify(ok.history, '{"stream":', "00".repeat(32)), (e) => e.code === "malformed_json");
  assert.throws(() => t.verify(ok.history, '{"seq":1}', "00".repeat(32)), (e) => e.code === "malformed_json" && /missing field `stream`/.test(e.message));
  const state = t.replay(ok.history);
  assert.throws(() => t.allowedCommands(ok.history, { party: null }), (e) => e.code === "malformed_json" && /missing field `role`/.test(e.message));
  assert.throws(
    () => t.decide(ok.history, { type: "Join" }, { command_id: "nope", actor: { role: "buyer" }, now: state.updated_at }),
    (e) => e.code === "malformed_json" && /UUID/.test(e.message),
  );
  assert.throws(() => new t.Client({}), (e) => e.code === "invalid_input" && e.message === "client options: `baseUrl` is required");
  assert.throws(() => new t.Client({ baseUrl: 5 }), (e) => e.code === "invalid_input" && /`baseUrl` must be a string/.test(e.message));
  assert.throws(() => new t.Client({ baseUrl: "http://x", serverKey: "zz" }), (e) => e.code === "invalid_key");
  assert.throws(() => new t.Client(null), (e) => e.code === "invalid_input");
});

test("money helpers are exact", () => {
  assert.equal(t.moneyAdd("1.10", "2", "USD"), "3.10");
  assert.equal(t.moneySub("1", "2.50", "USD"), "-1.50");
  assert.deepEqual(t.moneyAllocate("100.00", "USD", [1, 1, 1]), ["33.34", "33.33", "33.33"]);
  assert.equal(t.moneyBps("1000.05", "USD", 1000), "100.01");
  assert.equal(t.formatMoney("1500", "USD"), "1500.00 USD");
  assert.equal(t.moneyAdd("1", "2", "JPY"), "3");
  assert.throws(() => t.moneyAdd("1.005", "1", "USD"), (e) => e.code === "invalid_amount_scale");
  assert.throws(() => t.moneyAdd("1", "1", "XXX"), (e) => e.code === "unknown_currency");
  assert.throws(() => t.moneyAllocate("1.00", "USD", []), (e) => e.code === "invalid_split");
  assert.throws(() => t.moneyAllocate("1.00", "USD", [1, 2.5]), (e) => e.code === "invalid_split" && e.message === "invalid split: weight #1 (2.5) is not a whole number >= 0");
  assert.throws(() => t.moneyAllocate("1.00", "USD", [1, "2"]), (e) => e.code === "invalid_split" && e.message === "weights must be an array of numbers");
  assert.deepEqual(t.moneyAllocate("1.00", "USD", new Set([1, 3])), ["0.25", "0.75"], "any iterable of numbers");
  // Amounts whose cents do not fit 96 bits are overflows, never ten times smaller or rounded.
  const max = "792281625142643375935439503.35";
  assert.equal(t.formatMoney(max, "USD"), `${max} USD`);
  for (const f of [
    () => t.formatMoney("1000000000000000000000000000", "USD"),
    () => t.moneyAllocate("1000000000000000000000000000", "USD", [1]),
    () => t.moneyAdd(max, "0.06", "USD"),
  ]) {
    assert.throws(f, (e) => e.code === "amount_overflow");
  }
  // A weight list the caller's code cannot iterate: its error, as a TrustfoldError.
  const throwing = { *[Symbol.iterator]() { throw new Error("no weights today"); } };
  assert.throws(() => t.moneyAllocate("1.00", "USD", throwing), (e) => e.code === "invalid_input" && /no weights today/.test(e.message));
});

test("a detached buffer is refused, not misread", () => {
  const ok = vectors.find((v) => v.verify.ok);
  const bytes = new TextEncoder().encode(ok.history);
  structuredClone(bytes.buffer, { transfer: [bytes.buffer] });
  for (const f of [() => t.replay(bytes), () => t.verify(bytes), () => t.replayJson(bytes)]) {
    assert.throws(f, (e) => e.code === "invalid_input" && /detached/.test(e.message));
  }
});

test("verify: a signed head and a public key go together, else invalid_input naming the one missing, whatever the history", async () => {
  const ok = vectors.find((v) => v.verify.ok);
  const tampered = vectors.find((v) => !v.verify.ok && v.verify.code === "chain_broken");
  assert.ok(tampered, "a vector whose chain is broken");
  const noKey = "verify: a signed head was given without a public key: pass the server's pinned public key (publicKeyHex) to check the head against, or neither to check the hash chain only";
  const noHead = "verify: a public key was given without a signed head: pass the server's signed head (signedHeadJson) to check against the key, or neither to check the hash chain only";
  const refused = (message) => (e) => t.isTrustfoldError(e) && e.code === "invalid_input" && e.message === message;
  for (const history of [ok.history, tampered.history, new TextEncoder().encode(ok.history), "[]", "not json"]) {
    // A head checks nothing without the key it is checked against (it used to come back
    // as {ok: false, code: "invalid_key"}, which reads as a bad history) ...
    assert.throws(() => t.verify(history, ok.head), refused(noKey));
    assert.throws(() => t.verify(history, ok.head, undefined), refused(noKey));
    assert.throws(() => t.verify(history, "{not a head", undefined), refused(noKey), "the missing key, before the head is read");
    // ... and a pinned key proves nothing without the head it checks.
    assert.throws(() => t.verify(history, undefined, ok.key), refused(noHead));
    assert.throws(() => t.verify(history, "", ok.key), refused(noHead), "an empty head is no head");
    assert.throws(() => t.verify(history, "null", ok.key), refused(noHead));
  }
  // Both, or neither: the outcome, never a throw, for a history that does not verify.
  assert.deepEqual(t.verify(ok.history, ok.head, ok.key), ok.verify);
  assert.equal(t.verify(ok.history).ok, true, "neither: the chain alone");
  assert.equal(t.verify(ok.history, undefined, undefined).ok, true);
  assert.deepEqual(t.verify(tampered.history), { ok: false, code: "chain_broken", message: tampered.verify.message, seq: tampered.verify.seq });
  const r = t.verify("[]");
  assert.equal(r.ok, false);
  assert.equal(r.code, "invalid_history");
  // A key that is not one, with its head: the outcome says so (the history cannot be checked).
  assert.equal(t.verify(ok.history, ok.head, "zz").code, "invalid_key");
  // The browsers' module, through its own glue, says the same word for word: the rule
  // is the Rust binding's.
  const web = await import("../pkg/trustfold_wasm.js");
  web.initSync({ module: readFileSync(join(rootDir, "npm", "pkg", "trustfold_wasm_bg.wasm")) });
  assert.throws(() => web.verify(ok.history, ok.head), refused(noKey));
  assert.throws(() => web.verify(tampered.history, undefined, ok.key), refused(noHead));
});

test("feeds come from a Client: made with `new`, they are refused at once with invalid_input saying how to get one", () => {
  const how = {
    PaymentFeed: "PaymentFeed cannot be made with `new`: get one from a Client: `new Client({ baseUrl, token, serverKey }).payment(paymentId)`",
    PaymentViewFeed: "PaymentViewFeed cannot be made with `new`: get one from a Client: `new Client({ baseUrl, token, serverKey }).viewFeed(paymentId)`",
  };
  const client = new t.Client({ baseUrl: "http://127.0.0.1:9" });
  const pid = "b0000000-0000-4000-8000-000000000001";
  const made = { PaymentFeed: client.payment(pid), PaymentViewFeed: client.viewFeed(pid) };
  for (const [name, message] of Object.entries(how)) {
    const Feed = t[name];
    assert.equal(typeof Feed, "function", `${name} is exported (for instanceof)`);
    const refused = (e) => t.isTrustfoldError(e) && e.code === "invalid_input" && e.message === message;
    assert.throws(() => new Feed(), refused, `new ${name}()`);
    // Nor with a feed's insides, another feed or a Symbol of the same description.
    assert.throws(() => new Feed(made[name]), refused);
    assert.throws(() => new Feed(Symbol("trustfold.feedFromClient"), made[name]), refused);
    assert.throws(() => new Feed(Symbol.for("trustfold.feedFromClient"), {}), refused);
    class Sub extends Feed {}
    assert.throws(() => new Sub(), refused, "nor as a subclass");
    assert.throws(() => Reflect.construct(Feed, [undefined, undefined]), refused);
    // The Client's feeds are real ones.
    assert.ok(made[name] instanceof Feed, `client's ${name}`);
  }
  assert.equal(made.PaymentFeed.seq, 0);
  assert.equal(made.PaymentFeed.state(), undefined);
  assert.equal(made.PaymentViewFeed.version, 0);
  assert.equal(made.PaymentViewFeed.view(), undefined);
  made.PaymentFeed.close();
  made.PaymentViewFeed.close();
});

test("view, allowedCommands and decide work on a real history", () => {
  const v = vectors.find((x) => x.verify.ok);
  const state = t.replay(v.history);
  const v1 = t.view(v.history, ["buyer"]);
  assert.equal(v1.state.payment, state.payment);
  assert.ok(Array.isArray(v1.events));
  const [party, p] = Object.entries(state.participants).find(([, p]) => p.joined && !p.removed);
  const actor = { party, role: p.roles[0] };
  const kinds = t.allowedCommands(v.history, actor);
  assert.ok(Array.isArray(kinds));
  // A Join by an already-joined party is rejected with a stable code.
  assert.throws(
    () => t.decide(v.history, { type: "Join" }, { command_id: "00000000-0000-4000-8000-000000000001", actor, now: state.updated_at }),
    (e) => t.isTrustfoldError(e) && typeof e.code === "string" && e.code.length > 0,
  );
});

test("nextTick says when the platform's clock acts next, as the Rust core does", () => {
  const ach = vectors.find((v) => v.name === "em_ach_good_funds");
  // The history up to seq `n`, in its one-record-per-line layout (bytes unchanged).
  const upTo = (n) => {
    const lines = ach.history.trim().split("\n").slice(1, -1).map((l) => l.replace(/,$/, ""));
    return `[\n${lines.slice(0, n).join(",\n")}\n]\n`;
  };
  // Waiting for funds: one millisecond past the funding deadline (2026-11-05T15:00Z).
  assert.equal(t.nextTick(upTo(15)), "2026-11-05T15:00:00.001Z");
  // Settled by ACH on Tuesday: good funds two business days later.
  assert.equal(t.nextTick(upTo(17)), "2026-11-05T15:00:00Z");
  // Held, with nothing automatic in the policy: nothing due.
  assert.equal(t.nextTick(upTo(18)), null);
  assert.equal(t.nextTick(new TextEncoder().encode(upTo(17))), "2026-11-05T15:00:00Z");
  assert.throws(() => t.nextTick("[]"), (e) => e.code === "unknown_payment");
  assert.throws(() => t.nextTick("[{"), (e) => t.isTrustfoldError(e) && e.code === "malformed_json");
});

test("arguments of the wrong type are refused with invalid_input, and the module stays usable", () => {
  const ok = vectors.find((v) => v.verify.ok);
  const isInput = (e) => t.isTrustfoldError(e) && e.code === "invalid_input";
  const calls = [
    () => t.moneyAdd(42, "1", "USD"),
    () => t.moneySub("1", undefined, "USD"),
    () => t.formatMoney("1", null),
    () => t.moneyBps("100.00", "USD", -1),
    () => t.moneyBps("100.00", "USD", 4294967296),
    () => t.moneyBps("100.00", "USD", 1.9),
    () => t.moneyBps("100.00", "USD", NaN),
    () => t.moneyBps("100.00", "USD", "5"),
    () => t.stateAt(ok.history, "1"),
    () => t.stateAt(ok.history, 10n),
    () => t.view(ok.history, "buyer"),
    () => t.view(ok.history, undefined),
    () => t.verify(ok.history, { stream: "x" }, "00".repeat(32)),
    () => t.verify(ok.history, undefined, 7),
    () => t.allowedCommands(ok.history, { party: null, role: "buyer" }, Date.now()),
    () => t.allowedCommands(ok.history, undefined),
    () => t.decide(ok.history, { type: "Join", n: 1n }, {}),
    () => t.validatePolicy(7),
    () => t.replay(new ArrayBuffer(4)),
    () => new t.Client({ baseUrl: "http://127.0.0.1:9" }).payment(42),
    () => new t.Client({ baseUrl: "http://127.0.0.1:9", token: "ключ" }),
    () => new t.Client({ baseUrl: "http://127.0.0.1:9", token: "a\r\nX-Evil: 1" }),
  ];
  for (const call of calls) {
    assert.throws(call, isInput, call.toString());
    assert.equal(t.moneyAdd("1.10", "2", "USD"), "3.10", "still usable");
  }
  assert.throws(() => t.moneyBps("1", "USD", -1), (e) => /bps must be a whole number from 0 to 4294967295, got -1/.test(e.message));
  assert.equal(t.moneyBps("100.00", "USD", 4294967295), "42949672.95");
  assert.throws(() => t.moneyAllocate("1.00", "USD", undefined), (e) => e.code === "invalid_split");
});

test("an idempotency key that cannot be a header rejects the promise (the process lives on)", async () => {
  const c = new t.Client({ baseUrl: "http://127.0.0.1:9" });
  const pid = "b0000000-0000-4000-8000-000000000001";
  for (const key of ["ключ", "a\r\nX-Evil: 1", "", "k".repeat(256)]) {
    await assert.rejects(c.sendCommand(pid, { type: "Join" }, key), (e) => e.code === "invalid_input", JSON.stringify(key));
  }
  await assert.rejects(c.sendCommand(pid, { type: "Join" }, 12345), (e) => e.code === "invalid_input");
});

test("a view is never widened by a role the policy does not know", () => {
  const ok = vectors.find((v) => v.verify.ok && v.name === "em_happy_wire") ?? vectors.find((v) => v.verify.ok);
  const lender = t.view(ok.history, ["lender"]);
  assert.throws(() => t.view(ok.history, ["zzz"]), (e) => e.code === "unknown_role" && /not in policy/.test(e.message));
  assert.throws(() => t.view(ok.history, ["lender", "zzz"]), (e) => e.code === "unknown_role");
  assert.throws(() => t.view(ok.history, []), (e) => e.code === "roles_required");
  // Nor are commands offered to such a name.
  const party = JSON.parse(ok.history.split("\n")[1].replace(/,$/, "")).event.actor.party;
  assert.throws(() => t.allowedCommands(ok.history, { party, role: "zzz" }), (e) => e.code === "unknown_role");
  assert.ok(Array.isArray(t.allowedCommands(ok.history, { party, role: "listing_agent" })));
  // Two records on one line read as the document they are.
  const text = typeof ok.history === "string" ? ok.history : new TextDecoder().decode(ok.history);
  const joined = text.replace('},\n{"hash"', '},{"hash"');
  assert.notEqual(joined, text);
  assert.deepEqual(t.view(joined, ["lender"]), lender);
});

test("only the empty history [] stands for 'no payment yet'", () => {
  const ctx = { command_id: "00000000-0000-4000-8000-000000000001", actor: { role: "buyer" }, now: "2026-11-26T05:35:15Z" };
  for (const h of ["", "][", "]]]]", "[[[[]]]]", "[ ] [ ]"]) {
    assert.throws(() => t.decide(h, { type: "Join" }, ctx), (e) => e.code === "malformed_json" || e.code === "invalid_history", JSON.stringify(h));
  }
  assert.throws(() => t.decide(" [ \n ] ", { type: "Join" }, ctx), (e) => e.code === "unknown_payment");
});

test("policies validate", () => {
  for (const name of ["earnest-money", "marketplace", "milestone-escrow"]) {
    const summary = t.validatePolicy(readPolicy(name));
    assert.match(summary.hash, /^[0-9a-f]{64}$/);
  }
  // Fees that together take more than the gross can never be paid.
  const p = JSON.parse(readPolicy("marketplace"));
  p.fees = [0, 1].map((i) => ({ ...p.fees[0], name: `fee-${i}`, bps: 6000 }));
  assert.throws(() => t.validatePolicy(JSON.stringify(p)), (e) => e.code === "invalid_policy" && e.field === "fees");
  // A value of the wrong type names its field too.
  const q = JSON.parse(readPolicy("marketplace"));
  q.funding.rails = ["card", "bitcoin"];
  assert.throws(() => t.validatePolicy(JSON.stringify(q)), (e) => e.code === "invalid_policy" && e.field === "funding.rails[1]");
});


function readPolicy(name) {
  return readFileSync(join(rootDir, "examples", "policies", `${name}.json`), "utf8");
}

test("hostile arguments (throwing Proxies, lying typed arrays, huge buffers) are refused, and the module stays usable", () => {
  const ok = () => assert.equal(t.moneyAdd("1.00", "2.00", "USD"), "3.00");
  const refused = (f, what) => assert.throws(f, (e) => t.isTrustfoldError(e) && e.code === "invalid_input", what);
  // An exception thrown by the caller's object from inside the module would unwind its
  // frames without giving their stack back: a few thousand of them broke every call.
  const throwing = new Proxy({}, { ownKeys() { throw new Error("x"); }, get() { throw new Error("y"); } });
  for (let i = 0; i < 3000; i++) refused(() => new t.Client(throwing), "options");
  ok();
  class Lying extends Uint8Array {
    get length() { throw new Error("length"); }
  }
  const empty = new Lying(Buffer.from("[]"));
  for (let i = 0; i < 3000; i++) {
    assert.throws(() => t.replayJson(empty), (e) => e.code === "invalid_history"); // the real 2 bytes, "[]"
  }
  ok();
  class Longer extends Uint8Array {
    get length() { return 1e6; }
  }
  assert.throws(() => t.replayJson(new Longer(Buffer.from("[]"))), (e) => e.code === "invalid_history"); // not 1e6 bytes of memory
  const { proxy, revoke } = Proxy.revocable({}, {});
  revoke();
  refused(() => t.view(proxy, ["buyer"]), "view");
  refused(() => t.decide("[]", proxy, {}), "decide");
  refused(() => t.allowedCommands("[]", proxy), "allowedCommands");
  refused(() => t.validatePolicy(proxy), "validatePolicy");
  refused(() => new t.Client({ baseUrl: "https://x.example" }).payment(proxy), "payment");
  refused(() => t.moneyAllocate("10.00", "USD", { get [Symbol.iterator]() { throw new Error("g"); } }), "weights");
  refused(() => t.moneyAllocate("10.00", "USD", proxy), "weights");
  // More than 1 GiB at once: refused by name (2 GiB made the module's copy panic).
  assert.throws(() => t.replayJson(new Uint8Array(2 ** 30 + 1)), (e) => e.code === "invalid_input" && /1 GiB/.test(e.message));
  ok();
});

test("money in basis points is exact at every size, and a clock past year 9999 is refused", () => {
  // amount × bps beyond 28 digits used to be rounded before the division (a cent off).
  const exact = (amount, bps) => {
    const cents = BigInt(amount.replace(".", "")) * BigInt(bps);
    let q = cents / 10000n;
    const r = cents % 10000n;
    if ((r < 0n ? -r : r) * 2n >= 10000n) q += cents < 0n ? -1n : 1n;
    const s = (q < 0n ? -q : q).toString().padStart(3, "0");
    return `${q < 0n ? "-" : ""}${s.slice(0, -2)}.${s.slice(-2)}`;
  };
  for (const [amount, bps] of [["88704223286582739515650.05", 9999], ["792281625142643375935439503.35", 10000], ["123456789012345678901.99", 7], ["-99999999999999999999999.99", 9999], ["0.01", 5000]]) {
    assert.equal(t.moneyBps(amount, "USD", bps), exact(amount, bps), `${amount} × ${bps}`);
  }
  const v = vectors.find((x) => x.name === "em_happy_wire");
  const context = { command_id: "c0000000-0000-4000-8000-000000000001", actor: { party: null, role: "system" }, now: "9999-12-31T23:59:59-23:59" };
  assert.throws(() => t.decide(v.history, { type: "Tick" }, context), (e) => e.code === "invalid_timestamp", "a now in year 10000");
});

test("a signed head of another payment is named as such, not as events cut or added", () => {
  // Same server key, another payment's head: longer, shorter and as long as the history.
  const mine = vectors.find((v) => v.name === "em_happy_wire"); // 25 events
  const stream = JSON.parse(mine.head).stream;
  for (const other of ["em_reversal_correction", "ms_two_of_three", "mp_auto_release"]) { // 25, 30, 13 events
    const head = vectors.find((v) => v.name === other).head;
    const otherStream = JSON.parse(head).stream;
    const r = t.verify(mine.history, head, mine.key);
    assert.equal(r.ok, false, other);
    assert.equal(r.code, "bad_signature", `${other}: ${r.message}`);
    assert.equal(r.seq, null, other);
    assert.ok(r.message.includes(`head of payment ${otherStream}`) && r.message.includes(`history is of payment ${stream}`), r.message);
  }
});

test("the README's JavaScript samples are JavaScript", () => {
  const readme = readFileSync(join(rootDir, "npm", "README.md"), "utf8");
  const samples = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(samples.length >= 3, "the README has its samples");
  const dir = mkdtempSync(join(tmpdir(), "trustfold-readme-"));
  try {
    for (const [i, code] of samples.entries()) {
      const file = join(dir, `sample-${i}.mjs`);
      writeFileSync(file, code);
      const r = spawnSync(process.execPath, ["--check", file], { encoding: "utf8" });
      assert.equal(r.status, 0, `README sample ${i + 1} does not parse:\n${code}\n${r.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
