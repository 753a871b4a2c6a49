// The example payment widget (examples/widget: index.html, widget.js, served by its
// own serve.mjs) in headless Chromium against a real server: a buyer's widget verifies
// the history against the pinned key, offers only the commands the rules allow, sends
// them and follows other parties' commands live; a seller's and a lender's widgets
// (the policy hides bank details from sellers, amounts and most events from lenders)
// show the server's redacted view, marked as not verified, and act through the server;
// a wrong pinned key stops the widget with the verification error.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { launchChromium, loadVectors, rootDir } from "./support.mjs";
import { ADMIN, POLICY, Server, freePort, serverBinary } from "./server.mjs";

const { serveWidget } = await import(pathToFileURL(join(rootDir, "examples", "widget", "serve.mjs")).href);

const uuid = () => crypto.randomUUID();
let dir, web, srv, key, serverKey, browser;
const p = { agent: uuid(), buyer: uuid(), seller: uuid(), escrow: uuid(), lender: uuid() };

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "trustfold-widget-"));
  web = await serveWidget(0);
  srv = new Server(serverBinary(), dir, await freePort(), web.url);
  await srv.start();
  key = (await srv.ok("POST", "/v1/tenants", ADMIN, { name: "widget test" })).api_key;
  await srv.ok("POST", "/v1/policies", key, POLICY);
  p.payment = await srv.openPayment(key, {
    agent: p.agent,
    invite: [[p.buyer, "buyer", "Bo Buyer"], [p.seller, "seller", "Sam Seller"], [p.escrow, "escrow_holder", "Eve Escrow"], [p.lender, "lender", "Len Lender"]],
  });
  serverKey = (await srv.ok("GET", "/v1/server-key")).public_key;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await srv?.stop();
  await web?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * Opens the widget as `party` (of `payment`, default the shared one; `setup(tab)` runs
 * before the page loads); returns the tab and the page errors seen.
 */
async function open(party, extra = {}, { payment = p.payment, setup } = {}) {
  const token = (await srv.ok("POST", `/v1/payments/${payment}/tokens`, key, { party, ttl_seconds: 600 })).token;
  const q = new URLSearchParams({ server: srv.base, token, payment, party, key: serverKey, refresh: "600000", ...extra });
  const tab = await browser.context.newPage();
  const errors = [];
  tab.on("pageerror", (e) => errors.push(e.message));
  await setup?.(tab);
  await tab.goto(`${web.url}/?${q}`);
  return { tab, errors };
}

const version = (tab) => tab.$eval(".tf-widget", (w) => Number(w.dataset.version));
const buttons = (tab) => tab.$$eval(".tf-actions button", (bs) => bs.map((b) => b.dataset.command));
const text = (tab, sel) => tab.$eval(sel, (e) => e.textContent);
async function until(tab, what, fn, arg) {
  try {
    await tab.waitForFunction(fn, arg, { timeout: 20_000 });
  } catch (e) {
    const html = await tab.$eval("#payment", (r) => r.innerText).catch(() => "(no widget)");
    throw new Error(`waiting for ${what}: ${e.message}\nwidget:\n${html}\nserver log:\n${srv.log.slice(-2000)}`);
  }
}
const atVersion = (tab, v) => until(tab, `version ${v}`, (v) => Number(document.querySelector(".tf-widget")?.dataset.version) >= v, v);

test("buyer: verified in the browser, only the allowed commands, sent and followed live", async () => {
  const { tab, errors } = await open(p.buyer);
  await atVersion(tab, 5);
  assert.equal(await tab.$eval(".tf-widget", (w) => w.dataset.mode), "verified");
  assert.match(await text(tab, ".tf-trust"), /^Verified in this browser: 5 events, head [0-9a-f]{12}…, signed by the pinned server key\.$/);
  assert.equal(await text(tab, ".tf-amount"), "5000.00 USD");
  assert.equal(await tab.$$eval(".tf-timeline li", (l) => l.length), 5);
  // Invited, not joined: joining is all the rules allow the buyer now.
  assert.deepEqual(await buttons(tab), ["Join"]);

  await tab.click('button[data-command="Join"]');
  await atVersion(tab, 6);
  await until(tab, "the Join to be reported", () => document.querySelector(".tf-message")?.textContent === "Done: Join this payment.");
  assert.match(await text(tab, `li[data-party="${p.buyer}"]`), /Bo Buyer — buyer — joined \(you\)/);
  // Joined: agreeing to the terms is what the rules allow next.
  assert.deepEqual(await buttons(tab), ["AgreeToTerms"]);
  await tab.click('button[data-command="AgreeToTerms"]');
  await atVersion(tab, 7);
  assert.match(await text(tab, `li[data-party="${p.buyer}"]`), /— agreed \(you\)/);
  assert.deepEqual(await buttons(tab), [], "agreed once, not offered again");

  // Other parties act elsewhere; the widget follows them live, without a reload.
  await srv.command(key, p.payment, p.seller, "seller", { type: "Join" });
  await srv.command(key, p.payment, p.escrow, "escrow_holder", { type: "Join" });
  await atVersion(tab, 9);
  assert.match(await text(tab, `li[data-party="${p.seller}"]`), /Sam Seller — seller — joined$/);
  assert.match(await text(tab, `li[data-party="${p.escrow}"]`), /Eve Escrow — escrow_holder — joined$/);
  assert.equal(await tab.$$eval(".tf-timeline li", (l) => l.length), 9);
  // The new head's signature was checked again after the live records.
  await until(tab, "the new head's signature", () =>
    /^Verified in this browser: 9 events, head [0-9a-f]{12}…, signed by the pinned server key\.$/.test(document.querySelector(".tf-trust")?.textContent ?? ""));
  // What the page shows is the state the native core folds from the same history.
  const state = await srv.ok("GET", `/v1/payments/${p.payment}`, key);
  assert.equal(await version(tab), state.version);
  assert.equal(await text(tab, ".tf-status"), state.status);
  assert.deepEqual(errors, []);
  await tab.close();
});

test("seller and lender: the server's redacted view, marked unverified, acting through the server", async () => {
  const seller = await open(p.seller);
  await until(seller.tab, "the seller's view", () => document.querySelector(".tf-widget")?.dataset.mode === "server-view");
  assert.equal(await text(seller.tab, ".tf-trust"), "The server's view (not verified): the payment's policy hides part of it from your role.");
  assert.equal(await text(seller.tab, ".tf-amount"), "5000.00 USD");
  // The seller joined (first test) but has not agreed: the state suggests agreeing;
  // the server judges it.
  assert.deepEqual(await buttons(seller.tab), ["AgreeToTerms"]);
  const before = await version(seller.tab);
  await seller.tab.click('button[data-command="AgreeToTerms"]');
  await atVersion(seller.tab, before + 1);
  assert.match(await text(seller.tab, `li[data-party="${p.seller}"]`), /— agreed \(you\)/);
  assert.deepEqual(await buttons(seller.tab), []);
  assert.deepEqual(seller.errors, []);

  const lender = await open(p.lender);
  await until(lender.tab, "the lender's view", () => document.querySelector(".tf-widget")?.dataset.mode === "server-view");
  assert.equal(await text(lender.tab, ".tf-amount"), "hidden", await lender.tab.$eval("#payment", (r) => r.innerText));
  assert.deepEqual(await lender.tab.$$eval(".tf-timeline li", (l) => l.map((e) => e.textContent.split(" ")[1])), ["PaymentInitiated"]);
  assert.ok(!(await lender.tab.$eval("#payment", (r) => r.innerText)).includes("5000"), "no amount anywhere");
  // Invited, not joined: the state suggests joining; the server accepts it and the
  // refreshed view shows it.
  assert.deepEqual(await buttons(lender.tab), ["Join"]);
  const v = await version(lender.tab);
  await lender.tab.click('button[data-command="Join"]');
  await atVersion(lender.tab, v + 1);
  assert.match(await text(lender.tab, `li[data-party="${p.lender}"]`), /— joined \(you\)/);
  // The seller's widget picks up the lender's join live (the tests' widgets read the
  // server view again only when the stream shows an event: no periodic refresh).
  await atVersion(seller.tab, v + 1);
  assert.deepEqual(lender.errors, []);
  await seller.tab.close();
  await lender.tab.close();
});

test("a release approved from the widgets: the buyer's verified one, then the seller's server view", async () => {
  // Both have agreed: the funding deadline is watched, and the buyer's verified widget
  // says when the platform acts on its own (nextTick over the history it verified).
  const agreed = await srv.ok("GET", `/v1/payments/${p.payment}`, key);
  const early = await open(p.buyer);
  await atVersion(early.tab, agreed.version);
  const deadline = Date.parse(agreed.funding.deadline);
  const shown = await early.tab.$eval(".tf-next", (e) => e.dataset.at);
  assert.equal(Date.parse(shown), deadline + 1, "one millisecond past the funding deadline");
  assert.equal(await text(early.tab, ".tf-next"), `Next automatic step: ${shown}`);
  await early.tab.close();
  // Funded by wire (settled: good funds at once), then the escrow holder asks to
  // release it all to the seller. Buyer and seller have agreed (tests above).
  await srv.command(key, p.payment, p.buyer, "buyer", {
    type: "AttachFundingMethod",
    method: { rail: "wire", institution: "First Bank", account_last4: "4321", holder: "Bo Buyer" },
  });
  await srv.command(key, p.payment, p.buyer, "buyer", { type: "SubmitFunding", amount: { amount: "5000.00", currency: "USD" }, rail: "wire", rail_ref: "wire-1" });
  await srv.command(key, p.payment, null, "rail", { type: "RailNotice", rail_ref: "wire-1", notice: { kind: "settled" } });
  const request = uuid();
  const asked = await srv.command(key, p.payment, p.escrow, "escrow_holder", {
    type: "RequestRelease", request, allocations: [{ party: p.seller, amount: { amount: "5000.00", currency: "USD" } }],
  });

  const buyer = await open(p.buyer);
  await atVersion(buyer.tab, asked.state.version);
  assert.equal(await text(buyer.tab, ".tf-escrow"), "In escrow: 5000.00 USD");
  // Funded by wire and held: nothing automatic is due under this policy.
  assert.equal(await buyer.tab.$$eval(".tf-next", (l) => l.length), 0);
  assert.match(await text(buyer.tab, `li[data-request="${request}"]`), /^release of 5000\.00 USD: awaiting approvals, 0 approval\(s\)$/);
  // The rules let the buyer approve or deny it (both decided in the page first).
  assert.deepEqual(await buttons(buyer.tab), ["Approve", "Deny"]);
  assert.equal(await text(buyer.tab, 'button[data-command="Approve"]'), "Approve the release of 5000.00 USD");
  await buyer.tab.click('button[data-command="Approve"]');
  await atVersion(buyer.tab, asked.state.version + 1);
  assert.match(await text(buyer.tab, `li[data-request="${request}"]`), /1 approval\(s\)$/);
  // Approved: withdrawing is offered; approving again or denying (withdraw first) is not.
  assert.deepEqual(await buttons(buyer.tab), ["WithdrawApproval"]);

  // The listing agent (a server view: bank details hidden) is no approver under the
  // policy: nothing to approve is offered to it.
  const agent = await open(p.agent);
  await until(agent.tab, "the listing agent's view", () => document.querySelector(".tf-widget")?.dataset.mode === "server-view");
  await atVersion(agent.tab, asked.state.version + 1);
  assert.deepEqual(await buttons(agent.tab), []);
  assert.deepEqual(agent.errors, []);
  await agent.tab.close();

  const seller = await open(p.seller);
  await until(seller.tab, "the seller's view", () => document.querySelector(".tf-widget")?.dataset.mode === "server-view");
  assert.deepEqual(await buttons(seller.tab), ["Approve"]);
  await seller.tab.click('button[data-command="Approve"]');
  // The second approval authorizes the release (two events); the buyer's widget
  // follows it live.
  await until(seller.tab, "the release authorized", (r) => document.querySelector(`li[data-request="${r}"]`)?.textContent.startsWith("release of 5000.00 USD: authorized"), request);
  await until(buyer.tab, "the buyer's widget to follow", (r) => document.querySelector(`li[data-request="${r}"]`)?.textContent.startsWith("release of 5000.00 USD: authorized"), request);
  assert.deepEqual(await buttons(buyer.tab), [], "nothing left to approve or withdraw");
  assert.deepEqual(buyer.errors, []);
  assert.deepEqual(seller.errors, []);
  await buyer.tab.close();
  await seller.tab.close();
});

test("a command decided on a stale state loses cleanly (409), and the widget catches up", async () => {
  // A payment of its own; the widget's live stream is cut, so it does not hear of
  // the agent's next invitation before the buyer clicks.
  const agent = uuid(), buyer = uuid();
  const payment = await srv.openPayment(key, { agent, invite: [[buyer, "buyer", "Bo Buyer"]] });
  const { tab, errors } = await open(buyer, {}, {
    payment,
    setup: (t) => t.route((url) => url.pathname.endsWith("/stream"), (r) => r.abort()),
  });
  await atVersion(tab, 2);
  assert.deepEqual(await buttons(tab), ["Join"]);
  await srv.command(key, payment, agent, "listing_agent", { type: "Invite", party: uuid(), roles: ["seller"], name: "Sam" });
  await tab.click('button[data-command="Join"]');
  await until(tab, "the conflict to be reported", () => document.querySelector(".tf-message")?.textContent.startsWith("The payment changed meanwhile"));
  assert.equal(await version(tab), 3, "it shows the state it lost to");
  // Still joinable on the new state: the second click goes through.
  await tab.click('button[data-command="Join"]');
  await atVersion(tab, 4);
  assert.equal(await text(tab, ".tf-message"), "Done: Join this payment.");
  assert.match(await text(tab, `li[data-party="${buyer}"]`), /— joined \(you\)/);
  assert.deepEqual(errors, []);
  await tab.close();
});

test("a wrong pinned key stops the widget with the verification error", async () => {
  const other = loadVectors().find((v) => v.key && v.key !== serverKey)?.key;
  assert.ok(other, "a golden vector with another key");
  const { tab } = await open(p.buyer, { key: other });
  await until(tab, "the error", () => document.querySelector(".tf-error") !== null);
  assert.equal(await tab.$eval(".tf-error", (e) => e.dataset.code), "bad_signature");
  assert.match(await text(tab, ".tf-error"), /^This payment could not be verified \(bad_signature\): /);
  assert.equal(await tab.$$eval("button", (b) => b.length), 0, "nothing to act on");
  await tab.close();
});

test("serve.mjs serves the page and the package's dist/ and pkg/ only", async () => {
  const get = async (path) => (await fetch(`${web.url}${path}`)).status;
  assert.equal(await get("/"), 200);
  assert.equal(await get("/widget.js"), 200);
  assert.equal(await get("/trustfold/dist/web.js"), 200);
  assert.equal(await get("/trustfold/pkg/trustfold_wasm_bg.wasm"), 200);
  assert.equal((await fetch(`${web.url}/trustfold/pkg/trustfold_wasm_bg.wasm`)).headers.get("content-type"), "application/wasm");
  for (const path of ["/trustfold/package.json", "/trustfold/node_modules/", "/trustfold/test/support.mjs", "/%2e%2e/%2e%2e/package.json", "/..%2f..%2fpackage.json", "/trustfold/dist/..%2f..%2fpackage.json"]) {
    assert.equal(await get(path), 404, path);
  }
  assert.equal(await get("/%"), 400, "a path that is not valid percent-encoding");
  assert.equal(await get("/"), 200, "still serving after it");
});
