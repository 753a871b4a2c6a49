// A payment widget: what a tenant puts on its own web page so that one participant of
// a brokered payment sees it, acts on it and stays up to date, with the npm package
// `trustfold` (the Rust core compiled to WebAssembly) and a participant token minted
// by the tenant's backend.
//
// Two modes, chosen by what the payment's policy lets the participant see:
//
// - **Verified** (the participant's roles see everything, e.g. the buyer and the
//   escrow holder in examples/policies/earnest-money.json): the widget fetches the
//   history, checks every record's hash and link, folds it with the core's rules and
//   checks the server's signed head against the pinned server key. Of the commands it
//   can build (BUILDERS: join, agree, approve, withdraw, deny) it offers those the
//   rules allow (`allowedCommands`, then `decide` on each candidate before it is
//   shown) and follows the payment live over Server-Sent Events.
// - **Server view** (the policy hides something from the participant's roles: bank
//   details from sellers, amounts from lenders): the server sends a redacted view, which
//   cannot be verified. The widget shows it as the server's view, reads it again
//   whenever the payment's live stream shows the participant a new event, and offers
//   the commands the state suggests for the participant's role under the payment's
//   policy (when the view shows its opening event); the server judges them.
//
// Every command carries an idempotency key (kept for a retry of the same action) and
// the version it was decided on, so a concurrent change loses cleanly (409) instead of
// acting on a state the participant did not see.

import { init, Client, allowedCommands, decide, formatMoney, isTrustfoldError, nextTick } from "trustfold";

/** Commands this widget can build from the state: kind -> (state, request?) -> command. */
const BUILDERS = {
  Join: () => ({ type: "Join" }),
  AgreeToTerms: (s) => ({ type: "AgreeToTerms", terms_hash: s.terms_hash }),
  Approve: (s, r) => ({ type: "Approve", request: r, allocations_hash: s.requests[r].allocations_hash }),
  WithdrawApproval: (s, r) => ({ type: "WithdrawApproval", request: r }),
  Deny: (s, r) => ({ type: "Deny", request: r, reason: "denied from the payment widget" }),
};
const PER_REQUEST = new Set(["Approve", "WithdrawApproval", "Deny"]);
const LABELS = {
  Join: "Join this payment",
  AgreeToTerms: "Agree to the terms",
  Approve: "Approve",
  WithdrawApproval: "Withdraw my approval",
  Deny: "Deny",
};

const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : String(v));
  }
  el.append(...children.flat().filter((c) => c !== undefined && c !== null));
  return el;
};
const money = (m) => (m ? formatMoney(m.amount, m.currency) : "hidden");
const short = (hex) => `${hex.slice(0, 12)}…`;

/**
 * Mounts the widget in `root` and resolves once the payment is shown.
 *
 * @param {HTMLElement} root
 * @param {{ baseUrl: string, token: string, paymentId: string, party: string,
 *           serverKey?: string, role?: string, refreshMs?: number }} options
 *   `party` is the participant the token was minted for (the tenant's backend knows
 *   it); `role` which of its roles it acts in (default: its first); `serverKey` the
 *   server's Ed25519 key to pin (strongly advised); `refreshMs` how often a server
 *   view is also read again without a live event (default 60000: events hidden from
 *   the participant's roles send no live message).
 * @returns {Promise<{ mode: "verified" | "server-view", close(): void }>}
 */
export async function mountPaymentWidget(root, options) {
  await init();
  const { baseUrl, token, paymentId, party, serverKey } = options;
  const client = new Client({ baseUrl, token, serverKey });
  const feed = client.payment(paymentId);
  const viewFeed = client.viewFeed(paymentId); // the server view, in that mode
  const ui = { message: "", pending: undefined, busy: false };
  let mode = "verified";
  let timer;
  let closed = false;

  const state = () => (mode === "verified" ? feed.state() : viewFeed.view()?.state);
  const roleOf = (s) => options.role ?? s?.participants?.[party]?.roles?.[0];

  // The commands to offer, each decided against the verified history first.
  function candidates(s) {
    const role = roleOf(s);
    if (!s || !role) return [];
    const actor = { party, role };
    const awaiting = Object.entries(s.requests ?? {}).filter(([, r]) => r.status === "awaiting_approvals");
    const build = (kind) =>
      PER_REQUEST.has(kind)
        ? awaiting.map(([id, r]) => ({ kind, request: id, label: `${LABELS[kind]} the ${r.kind} of ${money(r.amount)}`, command: BUILDERS[kind](s, id) }))
        : [{ kind, label: LABELS[kind], command: BUILDERS[kind](s) }];
    if (mode === "verified") {
      const history = feed.history();
      const now = new Date().toISOString();
      return allowedCommands(history, actor, now)
        .filter((k) => BUILDERS[k])
        .flatMap(build)
        .filter((c) => {
          try {
            decide(history, c.command, { command_id: crypto.randomUUID(), actor, now });
            return true;
          } catch {
            return false; // the rules refuse it now (e.g. already approved)
          }
        });
    }
    // A server view: no history to decide against; offer what the state and the
    // payment's policy (in its opening event, when the view shows it) let this role
    // do, and only commands whose fields the view holds (a view hiding amounts has no
    // terms or allocations digests to agree to or approve).
    const me = s.participants?.[party];
    const policy = viewFeed.view()?.events?.find((e) => e.type === "PaymentInitiated")?.data?.policy;
    // Without the opening event in the view, the server judges who may (as before).
    const approves = (kind) => {
      if (!policy) return true;
      const a = policy[kind]?.approvals;
      return (a?.all_of ?? a?.n_of?.roles ?? []).includes(role);
    };
    const kinds = [];
    if (me && !me.joined) kinds.push("Join");
    if (me?.joined && !me.agreed && ["Draft", "AwaitingAgreement"].includes(s.status) &&
      s.terms_hash && (!policy || policy.agreement?.includes(role))) kinds.push("AgreeToTerms");
    if (me?.joined && awaiting.length) kinds.push("Approve", "WithdrawApproval");
    return kinds.flatMap(build).filter((c) => {
      if (!c.request) return true;
      const r = s.requests[c.request];
      if (!r.allocations_hash || !approves(r.kind)) return false;
      const mine = r.approvals?.[party] !== undefined;
      return c.kind === "Approve" ? !mine : mine;
    });
  }

  async function act(c) {
    // The same action retried on the same state (after a network error: it may have
    // been applied) keeps its idempotency key, so the server applies it at most once.
    const version = state().version;
    const same = ui.pending && ui.pending.version === version &&
      JSON.stringify(ui.pending.command) === JSON.stringify(c.command);
    ui.pending = same ? ui.pending : { command: c.command, version, key: crypto.randomUUID() };
    ui.busy = true;
    ui.message = `Sending: ${c.label}…`;
    render();
    let stale = true; // the state shown is no longer the payment's
    try {
      await client.sendCommand(paymentId, c.command, ui.pending.key, version);
      ui.pending = undefined;
      ui.message = `Done: ${c.label}.`;
    } catch (e) {
      const code = isTrustfoldError(e) ? e.code : "error";
      stale = code === "version_conflict";
      // Not knowing whether it was applied (the request or its answer lost, an answer
      // whose signature did not check, a gateway's 5xx): the same action keeps its key.
      const unknown = code === "network_error" || code === "bad_signature" || (e?.status ?? 0) >= 500;
      if (!unknown) ui.pending = undefined;
      ui.message = code === "version_conflict"
        ? "The payment changed meanwhile: here is its current state; try again if it still applies."
        : unknown
          ? `Not confirmed (${code}: ${e.message}): try again; it will not be applied twice.`
          : `Refused (${code}): ${e.message}`;
    }
    ui.busy = false;
    // Show the state the command left (or the one it lost to); a failure to fetch it
    // says so without taking back what the server answered.
    if (stale) {
      await refresh().catch((e) => {
        ui.message += ` (Could not refresh: ${isTrustfoldError(e) ? e.code : "error"}: ${e.message}.)`;
      });
    }
    render();
  }

  // One refresh at a time, and never back to an older state than the one shown.
  let refreshing = Promise.resolve();
  function refresh() {
    refreshing = refreshing.catch(() => {}).then(async () => {
      if (mode === "verified") {
        await feed.sync(); // re-checks the signed head against the pinned key
      } else {
        await viewFeed.refresh(); // keeps the newer of the view held and the one read
      }
    });
    return refreshing;
  }

  function render() {
    const s = state();
    if (!s) {
      root.replaceChildren(h("p", { class: "tf-message" }, ui.message || "Loading…"));
      return;
    }
    const escrow = s.ledger?.balances?.escrow?.posted;
    const history = mode === "verified" ? feed.history() : null;
    const events = history ? JSON.parse(history).map((r) => r.event) : viewFeed.view().events;
    // When the platform's clock acts on its own (good funds, a missed funding deadline,
    // an automatic release), from the verified history.
    const next = history ? nextTick(history) : null;
    root.replaceChildren(
      h("section", { class: "tf-widget", "data-mode": mode, "data-version": s.version },
        h("header", {},
          h("h2", {}, s.description || "Payment"),
          h("span", { class: "tf-status" }, s.status)),
        h("p", { class: "tf-amount" }, money(s.amount)),
        mode === "verified"
          ? h("p", { class: "tf-trust", "data-verified": "true" },
            `Verified in this browser: ${s.version} events, head ${short(s.head)}`,
            // With a pinned key the feed holds only what the server's signed head
            // covers (sync and live both check it first).
            serverKey ? ", signed by the pinned server key." : " (no server key pinned).")
          : h("p", { class: "tf-trust", "data-verified": "false" },
            "The server's view (not verified): the payment's policy hides part of it from your role."),
        escrow ? h("p", { class: "tf-escrow" }, `In escrow: ${money(escrow)}`) : null,
        next ? h("p", { class: "tf-next", "data-at": next }, `Next automatic step: ${next}`) : null,
        h("ul", { class: "tf-participants" },
          Object.entries(s.participants ?? {}).map(([id, p]) =>
            h("li", { "data-party": id },
              `${p.name || "(no name)"} — ${p.roles.join(", ")}`,
              p.removed ? " — removed" : p.agreed ? " — agreed" : p.joined ? " — joined" : " — invited",
              id === party ? " (you)" : ""))),
        h("ul", { class: "tf-requests" },
          Object.entries(s.requests ?? {}).map(([id, r]) =>
            h("li", { "data-request": id },
              `${r.kind} of ${money(r.amount)}: ${r.status.replaceAll("_", " ")}, `,
              `${Object.keys(r.approvals ?? {}).length} approval(s)`))),
        h("div", { class: "tf-actions" },
          candidates(s).map((c) =>
            h("button", { type: "button", "data-command": c.kind, disabled: ui.busy, onclick: () => act(c) }, c.label))),
        h("p", { class: "tf-message", role: "status" }, ui.message),
        h("ol", { class: "tf-timeline" },
          events.map((e) => h("li", { "data-seq": e.seq }, `${e.at ?? ""} ${e.type}${e.redacted ? " (partly hidden)" : ""}`)))));
  }

  try {
    await refresh();
  } catch (e) {
    if (!isTrustfoldError(e) || e.code !== "redacted_history") {
      ui.message = `This payment could not be verified (${isTrustfoldError(e) ? e.code : "error"}): ${e.message}`;
      root.replaceChildren(h("p", { class: "tf-message tf-error", role: "alert", "data-code": e.code ?? "" }, ui.message));
      throw e;
    }
    mode = "server-view";
    await refresh();
  }
  const failed = (what) => (e) => {
    if (closed) return;
    ui.message = `Could not ${what} (${isTrustfoldError(e) ? e.code : "error"}): ${e.message}`;
    render();
  };
  const refreshed = () => {
    if (closed) return;
    if (ui.message.startsWith("Could not")) ui.message = ""; // it worked again
    render();
  };
  if (mode === "verified") {
    feed.live(
      // Each live record is verified before it is reported: hash, link, rules, and
      // (with the pinned key) the server's signed head over it.
      refreshed,
      (e) => {
        // A dropped stream or a server error resumes by itself (`retrying`); a record
        // that does not verify, or an expired token, stops it.
        if (!e.retrying) failed("follow the payment any longer")(e);
      },
    );
  } else {
    // Read again when the live stream shows a new event (never going back to an older
    // view); a dropped stream or a server error resumes by itself (`retrying`).
    viewFeed.live(refreshed, (e) => {
      if (!e.retrying) failed("follow the payment any longer")(e);
    });
    // And now and then without one (events hidden from these roles send nothing);
    // errors are shown, and the next refresh tries again.
    const every = options.refreshMs ?? 60000;
    const tick = () => {
      timer = setTimeout(() => {
        if (closed) return;
        refresh().then(refreshed, failed("refresh the payment")).finally(() => {
          if (!closed) tick();
        });
      }, every);
    };
    tick();
  }
  render();
  return {
    mode,
    close() {
      closed = true;
      feed.close();
      viewFeed.close();
      clearTimeout(timer);
    },
  };
}
