#!/usr/bin/env node
// Fold throughput in Node, in one run, over the benchmark histories (10,000
// earnest-money payments × 20 events, the corpus of core/benches/fold.rs written to
// disk by core/examples/bench_histories.rs):
//
//   - the wasm module (npm `trustfold`) as Node loads it (`pkg/node/`, built for
//     speed): `replay` (verify + fold) and `replayUnverified` (fold only),
//     each document passed as the bytes received; and the browsers' module
//     (`pkg/trustfold_wasm_bg.wasm`, built for size) through its own glue, for
//     comparison;
//   - native Rust: the same example binary times `fold::replay` / `replay_unverified`
//     (+ `PaymentState::to_json`, as the binding does) over the same files;
//   - a plain JavaScript reducer as a JS integrator would write it (see `jsFold`).
//
// Events/s are the median of PASSES passes over the whole corpus (after a warm-up
// pass), the contenders taking turns (see `measureAll`). Usage:
//   node npm/bench/fold.mjs [--payments N] [--passes P] [--dir DIR] [--json OUT]
// The corpus is cached in DIR (default target/bench-histories). Needs npm/dist and
// npm/pkg built (node npm/scripts/build.mjs) and cargo for the native side.
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import Decimal from "decimal.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";
import * as tf from "../dist/node.js";
// The browsers' size-optimised module, through its own glue.
const web = await import("../pkg/trustfold_wasm.js");

const npmDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const root = resolve(npmDir, "..");
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : dflt;
};
const PAYMENTS = Number(opt("payments", "10000"));
const PASSES = Number(opt("passes", "5"));
const DIR = resolve(opt("dir", process.env.TRUSTFOLD_BENCH_DIR ?? join(root, "target", "bench-histories")));
const JSON_OUT = opt("json", undefined);
const cargo = process.env.CARGO ?? "cargo";
const example = ["run", "--quiet", "--release", "-p", "trustfold-core", "--example", "bench_histories", "--"];

function cargoRun(args, capture) {
  const r = spawnSync(cargo, [...example, ...args], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", capture ? "pipe" : "inherit", "inherit"],
  });
  if (r.status !== 0) throw new Error(`cargo ${example.join(" ")} ${args.join(" ")} failed (${r.status})`);
  return r.stdout;
}

// ---- the corpus -----------------------------------------------------------------------
console.log(`==> bench: corpus (${PAYMENTS} payments) in ${DIR}`);
cargoRun(["gen", DIR, String(PAYMENTS)], false);
const index = JSON.parse(readFileSync(join(DIR, "index.json"), "utf8"));
const all = readFileSync(join(DIR, "histories.bin"));
const bytes = index.docs.map(([o, l]) => all.subarray(o, o + l));
// What `fetch` gives a JS integrator: `await res.text()` (decoded once, outside the timing).
const decoder = new TextDecoder();
const texts = bytes.map((b) => decoder.decode(b));
const EVENTS = index.events;
web.initSync({ module: readFileSync(join(npmDir, "pkg", "trustfold_wasm_bg.wasm")) });
console.log(`    ${index.payments} payments, ${EVENTS} events, ${(all.length / 1e6).toFixed(1)} MB`);

// ---- the plain JavaScript reducer -----------------------------------------------------
// What a JS integrator would write without the wasm module: split the history into
// records (trustfold writes one per line; the event's exact bytes are needed for its
// hash, which JSON.parse cannot give back), SHA-256 each event's UTF-8 bytes with
// @noble/hashes and check the `prev` links (verify mode), JSON.parse each event, and
// fold it: status, version/head/timestamps, participants (invited/joined/agreed/
// removed, roles), funding legs, release/refund requests with approvals, and a
// double-entry ledger with balances per account (external:payer, clearing, escrow,
// party:<id>) in decimal.js. It checks seq continuity, the stream id and that
// allocations do not exceed the escrow balance, but none of the policy's permission,
// approval-threshold or deadline rules, nor `policy_hash` (the core checks all of
// them), so it does less than the wasm/native fold.
const PREFIX = '{"hash":"'.length; // then 64 hex digits, then '","event":'
const EVENT_AT = PREFIX + 64 + '","event":'.length;
const enc = new TextEncoder();

function records(text) {
  const out = [];
  let i = text.indexOf("\n") + 1;
  while (i > 0 && i < text.length) {
    let end = text.indexOf("\n", i);
    if (end < 0) end = text.length;
    let line = text.slice(i, end);
    i = end + 1;
    if (line.endsWith(",")) line = line.slice(0, -1);
    if (!line.startsWith('{"hash":"')) continue;
    out.push({ hash: line.slice(PREFIX, PREFIX + 64), event: line.slice(EVENT_AT, -1) });
  }
  return out;
}

const ZERO = "0".repeat(64);
// The status after an event, where it does not depend on the state (approximate:
// the core derives it from the policy's required roles, amounts and requests).
const STATUS_AFTER = {
  FundingSubmitted: "FundingInFlight", FundingSettled: "Funded", ReleaseRequested: "AwaitingApprovals",
  RefundRequested: "AwaitingApprovals", ReleaseAuthorized: "Disbursing", RefundAuthorized: "Refunding",
  DisputeOpened: "Disputed", PaymentCancelled: "Cancelled", PaymentExpired: "Expired",
};

function post(st, from, to, amount) {
  const b = st.balances;
  b[from] = (b[from] ?? new Decimal(0)).minus(amount);
  b[to] = (b[to] ?? new Decimal(0)).plus(amount);
}

function jsFold(text, verify) {
  let st = null;
  let prev = ZERO;
  for (const r of records(text)) {
    if (verify) {
      const h = bytesToHex(sha256(enc.encode(r.event)));
      if (h !== r.hash) throw new Error(`event bytes hash to ${h}, the record says ${r.hash}`);
    }
    const e = JSON.parse(r.event);
    if (verify && e.prev !== prev) throw new Error(`seq ${e.seq}: broken prev link`);
    prev = r.hash;
    const d = e.data;
    if (st === null) {
      if (e.type !== "PaymentInitiated" || e.seq !== 1) throw new Error("a history starts with PaymentInitiated");
      st = {
        payment: e.stream, version: 0, status: "Draft", currency: d.amount.currency,
        amount: new Decimal(d.amount.amount), created_at: e.at, participants: {}, legs: {}, requests: {},
        balances: {}, method: null, terms_hash: null,
      };
      st.participants[d.initiator] = { roles: d.initiator_roles, name: d.initiator_name, joined: true, agreed: false, removed: false };
    } else if (e.seq !== st.version + 1 || e.stream !== st.payment) {
      throw new Error(`seq ${e.seq} after ${st.version}`);
    }
    const money = (m) => {
      if (m.currency !== st.currency) throw new Error("currency mismatch");
      return new Decimal(m.amount);
    };
    switch (e.type) {
      case "PaymentInitiated": break;
      case "ParticipantInvited":
        st.participants[d.party] = { roles: d.roles, name: d.name, email: d.email, joined: false, agreed: false, removed: false };
        break;
      case "ParticipantJoined":
        st.participants[d.party].joined = true;
        if (Object.values(st.participants).every((p) => p.joined || p.removed)) st.status = "AwaitingAgreement";
        break;
      case "ParticipantRemoved": st.participants[d.party].removed = true; break;
      case "TermsAgreed":
        st.participants[d.party].agreed = true;
        st.terms_hash = d.terms_hash;
        if (Object.values(st.participants).filter((p) => p.roles.includes("buyer") || p.roles.includes("seller")).every((p) => p.agreed)) st.status = "AwaitingFunds";
        break;
      case "FundingMethodAttached": st.method = d.method; break;
      case "FundingSubmitted":
        st.legs[d.leg] = { amount: money(d.amount), status: "pending", rail_ref: d.rail_ref };
        st.status = "Funding";
        break;
      case "FundingSettled": {
        const leg = st.legs[d.leg];
        leg.status = "settled";
        post(st, "external:payer", "clearing", leg.amount);
        break;
      }
      case "FundsAvailable":
        post(st, "clearing", "escrow", money(d.amount));
        st.legs[d.leg].status = "available";
        if (st.balances.escrow.gte(st.amount)) st.status = "Held";
        break;
      case "FundingFailed": case "FundingReturned": st.legs[d.leg].status = "failed"; break;
      case "ReleaseRequested": case "ReleaseAmended": case "RefundRequested": {
        const allocations = (d.allocations ?? [{ party: "payer", amount: d.amount }]).map((a) => ({ party: a.party, amount: money(a.amount) }));
        const total = allocations.reduce((s, a) => s.plus(a.amount), new Decimal(0));
        if (total.gt(st.balances.escrow ?? 0)) throw new Error("allocations exceed the escrow balance");
        st.requests[d.request] = { allocations, total, hash: d.allocations_hash, approvals: {}, status: "pending" };
        break;
      }
      case "ApprovalGranted": st.requests[d.request].approvals[d.party] = true; break;
      case "ApprovalWithdrawn": case "ApprovalDenied": delete st.requests[d.request].approvals[d.party]; break;
      case "ReleaseAuthorized": case "RefundAuthorized": st.requests[d.request].status = "authorized"; break;
      case "DisbursementSubmitted": st.requests[d.request].status = "submitted"; break;
      case "DisbursementSettled": {
        const req = st.requests[d.request];
        for (const a of req.allocations) post(st, "escrow", `party:${a.party}`, a.amount);
        req.status = "settled";
        st.status = (st.balances.escrow ?? new Decimal(0)).isZero() ? "Completed" : "Held";
        break;
      }
      case "RequestCancelled": st.requests[d.request].status = "cancelled"; break;
      default: break; // other events only move the version here
    }
    st.status = STATUS_AFTER[e.type] ?? st.status;
    st.version = e.seq;
    st.head = r.hash;
    st.updated_at = e.at;
  }
  return st;
}

// ---- timing ---------------------------------------------------------------------------
// The contenders take turns: one warm-up pass each (JIT, wasm tier-up), then PASSES
// rounds in which each runs one pass over the whole corpus. This shared VM's speed
// drifts by ±5 % over a minute, so taking turns puts every ratio's two sides under the
// same conditions; a ratio is the median of its per-round ratios.
function measureAll(entries) {
  for (const [, fn] of entries) fn();
  const secs = entries.map(() => []);
  for (let p = 0; p < PASSES; p++) {
    entries.forEach(([, fn], k) => {
      const t0 = process.hrtime.bigint();
      fn();
      secs[k].push(Number(process.hrtime.bigint() - t0) / 1e9);
    });
  }
  const out = {};
  entries.forEach(([name, , key], k) => {
    const sorted = [...secs[k]].sort((a, b) => a - b);
    const s = sorted[Math.floor(sorted.length / 2)];
    console.log(`    ${name.padEnd(44)} ${Math.round(EVENTS / s).toLocaleString("en-US").padStart(11)} events/s  (${(s * 1e9 / EVENTS).toFixed(0)} ns/event)`);
    out[key] = EVENTS / s;
    out[`${key}Passes`] = secs[k].map((t) => EVENTS / t);
  });
  return out;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const pass = (f) => () => {
  let n = 0;
  for (let i = 0; i < bytes.length; i++) n += f(i);
  if (n === 0) throw new Error("nothing folded");
};

// Correctness first: the JS reducer agrees with the core on every payment's
// status/version/head, and on the amount settled to each party.
for (let i = 0; i < bytes.length; i += Math.max(1, Math.floor(bytes.length / 200))) {
  const core = JSON.parse(tf.replayJson(bytes[i]));
  const js = jsFold(texts[i], true);
  if (core.version !== js.version || core.head !== js.head || core.status !== js.status) {
    throw new Error(`payment ${i}: the JS reducer says ${js.status}@${js.version}, the core ${core.status}@${core.version}`);
  }
  if (tf.replayUnverifiedJson(bytes[i]) !== tf.replayJson(bytes[i])) throw new Error(`payment ${i}: replayUnverified differs`);
  if (web.replay(bytes[i]) !== tf.replayJson(bytes[i])) throw new Error(`payment ${i}: the browsers' module differs`);
}

console.log(`==> bench: native Rust (core/examples/bench_histories.rs, median of ${PASSES})`);
const native = JSON.parse(cargoRun(["fold", DIR, String(PASSES)], true).trim().split("\n").pop());
console.log(`    verify+fold ${Math.round(native.verify_fold_events_per_s).toLocaleString("en-US")} events/s, fold-only ${Math.round(native.fold_only_events_per_s).toLocaleString("en-US")} events/s`);

console.log(`==> bench: in Node ${process.version} (median of ${PASSES} rounds after a warm-up pass; contenders take turns)`);
const r = measureAll([
  ["wasm replay (verify+fold), bytes", pass((i) => tf.replayJson(bytes[i]).length), "wasmVerify"],
  ["wasm replayUnverified (fold only), bytes", pass((i) => tf.replayUnverifiedJson(bytes[i]).length), "wasmFold"],
  ["wasm replay (verify+fold), string", pass((i) => tf.replayJson(texts[i]).length), "wasmVerifyText"],
  ["browsers' module: replay (verify+fold), bytes", pass((i) => web.replay(bytes[i]).length), "webVerify"],
  ["browsers' module: replayUnverified, bytes", pass((i) => web.replayUnverified(bytes[i]).length), "webFold"],
  ["JS reducer (verify+fold)", pass((i) => jsFold(texts[i], true).version), "jsVerify"],
  ["JS reducer (fold only)", pass((i) => jsFold(texts[i], false).version), "jsFold"],
  ["LIMIT: JSON.parse of each event only", pass((i) => records(texts[i]).reduce((n, x) => n + JSON.parse(x.event).seq, 0)), "jsParseOnly"],
]);
r.nativeVerify = native.verify_fold_events_per_s;
r.nativeFold = native.fold_only_events_per_s;

// Against the JS reducer: the median of the rounds' ratios (both sides measured in the
// same round). Against native (another process, run before): the ratio of medians.
const perRound = (a, b) => median(r[`${a}Passes`].map((x, p) => x / r[`${b}Passes`][p]));
const rows = [
  ["verify+fold: wasm / JS reducer", perRound("wasmVerify", "jsVerify"), 1.5],
  ["fold-only: wasm / JS reducer", perRound("wasmFold", "jsFold"), 1.0],
  ["verify+fold: wasm / native", r.wasmVerify / r.nativeVerify, 0.5],
  ["fold-only: wasm / native", r.wasmFold / r.nativeFold, 0.5],
];
// The browsers' module against the same targets (not the one Node loads; shown so
// the price of its size optimisation is on record).
const webRows = [
  ["verify+fold: browser module / JS", perRound("webVerify", "jsVerify")],
  ["fold-only: browser module / JS", perRound("webFold", "jsFold")],
  ["verify+fold: browser module / native", r.webVerify / r.nativeVerify],
  ["fold-only: browser module / native", r.webFold / r.nativeFold],
];
console.log("==> bench: ratios vs targets");
for (const [name, v, target] of rows) {
  console.log(`    ${name.padEnd(34)} ${v.toFixed(2)}×  (target ≥ ${target}×: ${v >= target ? "met" : "MISSED"})`);
}
const spread = (a, b) => {
  const xs = r[`${a}Passes`].map((x, p) => x / r[`${b}Passes`][p]).sort((x, y) => x - y);
  return `${xs[0].toFixed(2)}–${xs[xs.length - 1].toFixed(2)}×`;
};
console.log(`    per-round range: verify+fold ${spread("wasmVerify", "jsVerify")}, fold-only ${spread("wasmFold", "jsFold")}`);
console.log("==> bench: the browsers' module (pkg/trustfold_wasm_bg.wasm, size-optimised), for comparison");
for (const [name, v] of webRows) console.log(`    ${name.padEnd(38)} ${v.toFixed(2)}×`);
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ events: EVENTS, passes: PASSES, node: process.version, rates: r, ratios: rows, browserModuleRatios: webRows }, null, 1));
