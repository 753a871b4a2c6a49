//! What a viewer sees: a role's redacted state and history.
//!
//! The pinned policy's `visibility` says, per role, which event types appear in the
//! role's history and which parts (amounts, bank details, contacts, ledger, requests,
//! disputes) are removed from state and events; hiding requests or disputes also drops
//! the events about them ([`shown`]). A party with several roles sees the union of what
//! each role may see; a role the policy does not define adds nothing, and no role sees
//! nothing. Redacted views are for display: they are not the
//! verifiable history (which only parties entitled to everything receive).
//!
//! ```
//! # use trustfold_core::policy::{Hidden, Visibility};
//! # use trustfold_core::view::redact_state;
//! // A view that hides amounts replaces them with null.
//! let v = Visibility { hide: [Hidden::Amounts].into_iter().collect(), ..Default::default() };
//! let state = serde_json::json!({"status":"Held","amount":{"amount":"5.00","currency":"USD"}});
//! assert_eq!(redact_state(state, &v)["amount"], serde_json::Value::Null);
//! ```

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::envelope::Envelope;
use crate::policy::{EventFilter, Hidden, Role, Visibility};
use crate::state::PaymentState;

/// The state as the given roles may see it, as JSON.
pub fn state_view(state: &PaymentState, roles: &[Role]) -> Value {
    let vis = state.policy_doc.visibility_for(roles);
    let v = serde_json::to_value(&*shown_state(state, &vis)).unwrap_or(Value::Null);
    redact_state(v, &vis)
}

/// The status the given roles' view shows: the payment's own, unless the view hides
/// what it tells (a dispute, a request), then the status it would have without that.
///
/// ```
/// use trustfold_core::{fold::replay, policy::Role, state::Status, view::shown_status};
/// // Disputed while its disbursement was on the rail; a lender's view hides disputes.
/// let history = include_bytes!("../tests/vectors/em_dispute_during_disbursement.history.json");
/// let s = trustfold_core::fold::replay_at(history, 24)?;
/// assert_eq!(s.status, Status::Disputed);
/// assert_eq!(shown_status(&s, &[Role::new("buyer")]), Status::Disputed);
/// assert_ne!(shown_status(&s, &[Role::new("lender")]), Status::Disputed);
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn shown_status(state: &PaymentState, roles: &[Role]) -> crate::state::Status {
    let vis = state.policy_doc.visibility_for(roles);
    shown_state(state, &vis).status
}

/// The state with a status that tells no more than the view shows: a view that hides
/// disputes does not read `Disputed`, one that hides requests does not read
/// `AwaitingApprovals`, `Disbursing` or `Refunding`; it reads the status the payment
/// would have without them (e.g. `Held`).
fn shown_state<'a>(state: &'a PaymentState, vis: &Visibility) -> Cow<'a, PaymentState> {
    use crate::state::Status;
    let hides_disputes = vis.hide.contains(&Hidden::Disputes);
    let hides_requests = vis.hide.contains(&Hidden::Requests);
    let tells = match state.status {
        Status::Disputed => hides_disputes,
        Status::AwaitingApprovals | Status::Disbursing | Status::Refunding => hides_requests,
        _ => false,
    };
    if !tells {
        return Cow::Borrowed(state);
    }
    let mut s = state.clone();
    if hides_disputes {
        for (_, d) in s.disputes.iter_mut() {
            d.open = false;
        }
    }
    if hides_requests {
        for (_, r) in s.requests.iter_mut() {
            if r.status.is_open() {
                r.status = crate::state::RequestStatus::Cancelled;
            }
        }
    }
    let status = s.derive_status();
    let mut shown = state.clone();
    shown.status = status;
    Cow::Owned(shown)
}

/// Removes hidden parts from a serialized state.
pub fn redact_state(mut v: Value, vis: &Visibility) -> Value {
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    for h in &vis.hide {
        match h {
            Hidden::Amounts => {
                for k in ["amount", "ledger"] {
                    if obj.contains_key(k) {
                        obj.insert(k.into(), Value::Null);
                    }
                }
                // Digests of amounts give them away to anyone who tries the likely ones:
                // the terms', the allocations' (also what each approval bound), and the
                // chain's head (the hash of the last event, amounts included).
                obj.remove("terms_hash");
                obj.remove("head");
                if let Some(f) = obj.get_mut("funding").and_then(Value::as_object_mut) {
                    f.insert("attempts".into(), Value::Null);
                }
                if let Some(reqs) = obj.get_mut("requests").and_then(Value::as_object_mut) {
                    for r in reqs.values_mut().filter_map(Value::as_object_mut) {
                        for k in REQUEST_AMOUNT_KEYS {
                            r.remove(*k);
                        }
                        if let Some(a) = r.get_mut("approvals").and_then(Value::as_object_mut) {
                            for v in a.values_mut() {
                                *v = Value::Bool(true);
                            }
                        }
                    }
                }
            }
            Hidden::BankDetails => {
                if let Some(f) = obj.get_mut("funding").and_then(Value::as_object_mut) {
                    f.remove("method");
                    if let Some(a) = f.get_mut("attempts").and_then(Value::as_array_mut) {
                        for a in a.iter_mut().filter_map(Value::as_object_mut) {
                            a.remove("rail_ref");
                        }
                    }
                }
                if let Some(reqs) = obj.get_mut("requests").and_then(Value::as_object_mut) {
                    for r in reqs.values_mut().filter_map(Value::as_object_mut) {
                        r.remove("rail_ref");
                    }
                }
            }
            Hidden::Contacts => {
                if let Some(ps) = obj.get_mut("participants").and_then(Value::as_object_mut) {
                    for p in ps.values_mut().filter_map(Value::as_object_mut) {
                        p.remove("email");
                        p.remove("name");
                    }
                }
            }
            Hidden::Ledger => {
                obj.insert("ledger".into(), Value::Null);
            }
            Hidden::Requests => {
                obj.insert("requests".into(), Value::Object(Map::new()));
            }
            Hidden::Disputes => {
                obj.insert("disputes".into(), Value::Object(Map::new()));
                // A request also tells of a dispute: the resolution it carries out, or
                // that one pulled it back.
                if let Some(reqs) = obj.get_mut("requests").and_then(Value::as_object_mut) {
                    for r in reqs.values_mut().filter_map(Value::as_object_mut) {
                        if r.get("mandate").and_then(Value::as_str) == Some(DISPUTE_MANDATE) {
                            r.remove("mandate");
                        }
                        if r.get("failure")
                            .and_then(Value::as_str)
                            .is_some_and(|f| DISPUTE_FAILURES.contains(&f))
                        {
                            r.remove("failure");
                        }
                    }
                }
            }
        }
    }
    if hides_rail_refs(vis) {
        obj.remove("rail_refs");
        obj.remove("held_notices");
    }
    if !shows_failures(vis) {
        if let Some(f) = obj.get_mut("funding").and_then(Value::as_object_mut) {
            if f.contains_key("failed_attempts") {
                f.insert("failed_attempts".into(), Value::Null);
            }
            if let Some(a) = f.get_mut("attempts").and_then(Value::as_array_mut) {
                a.retain(|a| {
                    !a.get("status")
                        .and_then(Value::as_str)
                        .is_some_and(|s| FAILED_ATTEMPTS.contains(&s))
                });
                for a in a.iter_mut().filter_map(Value::as_object_mut) {
                    for k in FAILURE_KEYS {
                        a.remove(*k);
                    }
                }
            }
        }
    }
    v
}

/// Whether a view drops the state's `rail_refs` and `held_notices`: rail references
/// name bank transfers (shown only to those who see bank details and amounts), and
/// held notices and references tell of failed transfers (not for a view kept from
/// funding failures).
fn hides_rail_refs(vis: &Visibility) -> bool {
    vis.hide.contains(&Hidden::BankDetails)
        || vis.hide.contains(&Hidden::Amounts)
        || !shows_failures(vis)
}

/// Statuses of the funding attempts a view kept from failures leaves out.
const FAILED_ATTEMPTS: &[&str] = &["failed", "returned"];
/// Fields of a funding attempt that tell of a failure or return.
const FAILURE_KEYS: &[&str] = &["code", "returned"];

/// Whether a view shows the events `funding.failed_attempts` counts (`FundingFailed`
/// and `FundingReturned`). A view that does not shows the count as `null`, lists no
/// failed or returned funding attempt, no attempt's `code` or `returned`, and no
/// `rail_refs` or `held_notices` (which name failed transfers and carry failures): how
/// often a payer's funding failed or came back is not for a role kept from those
/// events (the example earnest-money policy's lender sees only that funds are
/// available). A view that shows the ledger still shows its voided and returned legs.
///
/// ```
/// # use trustfold_core::policy::{EventFilter, Visibility};
/// # use trustfold_core::view::shows_failures;
/// let lender = Visibility {
///     events: EventFilter::Only(["FundsAvailable".to_string()].into_iter().collect()),
///     ..Default::default()
/// };
/// assert!(!shows_failures(&lender));
/// assert!(shows_failures(&Visibility::default()));
/// ```
pub fn shows_failures(vis: &Visibility) -> bool {
    shown(vis, "FundingFailed") && shown(vis, "FundingReturned")
}

/// The events the given roles may see, each redacted, as JSON envelopes.
pub fn history_view(state: &PaymentState, events: &[Envelope], roles: &[Role]) -> Vec<Value> {
    let vis = state.policy_doc.visibility_for(roles);
    events
        .iter()
        .filter(|e| shown(&vis, e.event_type().name()))
        .map(|e| redact_event(serde_json::to_value(e).unwrap_or(Value::Null), &vis))
        .collect()
}

/// Events about release and refund requests: hidden from a view that hides `requests`
/// (as its state's requests are), whatever its event filter lets through.
const REQUEST_EVENTS: &[&str] = &[
    "ReleaseRequested",
    "ReleaseAmended",
    "RefundRequested",
    "ApprovalGranted",
    "ApprovalDenied",
    "ApprovalWithdrawn",
    "ReleaseAuthorized",
    "RefundAuthorized",
    "RequestCancelled",
    "FeeAssessed",
    // A disbursement carries out a request (its id, rail and any failure).
    "DisbursementSubmitted",
    "DisbursementSettled",
    "DisbursementFailed",
];
/// A request's `mandate` when it carries out a dispute's resolution.
const DISPUTE_MANDATE: &str = "dispute_resolution";
/// A request's `failure` when a dispute pulled it back or its resolution replaced it.
const DISPUTE_FAILURES: &[&str] = &["dispute opened", "dispute resolved"];
/// Events about disputes: hidden from a view that hides `disputes`.
const DISPUTE_EVENTS: &[&str] = &["DisputeOpened", "DisputeResolved"];

/// Whether an event of this type appears in a view: its filter lets it through and it
/// is not about a part the view hides.
///
/// ```
/// # use trustfold_core::policy::{EventFilter, Hidden, Visibility};
/// # use trustfold_core::view::shown;
/// let v = Visibility { hide: [Hidden::Requests].into_iter().collect(), ..Default::default() };
/// assert!(!shown(&v, "ApprovalGranted"));
/// assert!(shown(&v, "FundsAvailable"));
/// assert!(shown(&Visibility::default(), "ApprovalGranted"));
/// ```
pub fn shown(vis: &Visibility, event_type: &str) -> bool {
    let listed = match &vis.events {
        EventFilter::All => true,
        EventFilter::Only(types) => types.contains(event_type),
    };
    listed
        && !(vis.hide.contains(&Hidden::Requests) && REQUEST_EVENTS.contains(&event_type))
        && !(vis.hide.contains(&Hidden::Disputes) && DISPUTE_EVENTS.contains(&event_type))
}

/// Fields of an event's data hidden from a view that hides amounts: the amounts, and
/// the digests over them (`terms_hash`, `allocations_hash`), which give an amount away
/// to anyone who hashes the likely ones.
const AMOUNT_KEYS: &[&str] = &[
    "amount",
    "allocations",
    "policy",
    "terms_hash",
    "allocations_hash",
    // A held rail notice (a return's carries its amount).
    "notice",
];
/// Fields of a state's request hidden from a view that hides amounts.
const REQUEST_AMOUNT_KEYS: &[&str] = &["amount", "allocations", "fees", "allocations_hash"];
const BANK_KEYS: &[&str] = &["method", "rail_ref"];
const CONTACT_KEYS: &[&str] = &["name", "email", "initiator_name"];

/// Removes hidden fields from a serialized envelope's `data`.
pub fn redact_event(mut v: Value, vis: &Visibility) -> Value {
    if let Some(data) = v.get_mut("data").and_then(Value::as_object_mut) {
        for h in &vis.hide {
            let keys: &[&str] = match h {
                Hidden::Amounts => AMOUNT_KEYS,
                Hidden::BankDetails => BANK_KEYS,
                Hidden::Contacts => CONTACT_KEYS,
                Hidden::Disputes => &["reason", "note"],
                _ => &[],
            };
            for k in keys {
                data.remove(*k);
            }
        }
    }
    if let Some(obj) = v.as_object_mut() {
        // The chain links mean nothing in a redacted view.
        obj.remove("prev");
        obj.insert("redacted".into(), Value::Bool(!vis.hide.is_empty()));
    }
    v
}

/// A role's view as JSON text, `{"events":[…],"state":{…}}`: byte for byte what
/// serializing `json!({"state": state_view(..), "events": history_view(..)})` gives
/// (keys in sorted order, as a `serde_json::Value` writes them), but redacted on the
/// serialized bytes, without building `serde_json::Value`s (less code in WebAssembly).
pub fn view_json(state: &PaymentState, events: &[Envelope], roles: &[Role]) -> Vec<u8> {
    let vis = state.policy_doc.visibility_for(roles);
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"events\":[");
    let visible = events.iter().filter(|e| shown(&vis, e.event_type().name()));
    for (i, e) in visible.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_redacted(&mut out, &e.canonical_json(), |n| {
            redact_event_tree(n, &vis)
        });
    }
    out.extend_from_slice(b"],\"state\":");
    write_redacted(&mut out, &shown_state(state, &vis).to_json(), |n| {
        redact_state_tree(n, &vis)
    });
    out.push(b'}');
    out
}

/// Appends `bytes` (JSON written by trustfold) to `out` after `redact` changed its tree;
/// `null` if they do not parse.
fn write_redacted(out: &mut Vec<u8>, bytes: &[u8], redact: impl FnOnce(&mut tree::Node<'_>)) {
    match tree::parse(bytes) {
        Some(mut n) => {
            redact(&mut n);
            n.write(out);
        }
        None => out.extend_from_slice(b"null"),
    }
}

use tree::ObjectExt as _;

const NULL: tree::Node<'static> = tree::Node::Scalar(b"null");

/// [`redact_state`] on a tree.
fn redact_state_tree(v: &mut tree::Node<'_>, vis: &Visibility) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    for h in &vis.hide {
        match h {
            Hidden::Amounts => {
                for k in [&b"amount"[..], b"ledger"] {
                    if obj.field_mut(k).is_some() {
                        obj.set(k, NULL);
                    }
                }
                obj.unset(b"terms_hash");
                obj.unset(b"head");
                if let Some(f) = obj.field_mut(b"funding").and_then(|n| n.as_object_mut()) {
                    f.set(b"attempts", NULL);
                }
                if let Some(reqs) = obj.field_mut(b"requests").and_then(|n| n.as_object_mut()) {
                    for (_, r) in reqs.iter_mut() {
                        if let Some(r) = r.as_object_mut() {
                            for k in REQUEST_AMOUNT_KEYS {
                                r.unset(k.as_bytes());
                            }
                            if let Some(a) =
                                r.field_mut(b"approvals").and_then(|n| n.as_object_mut())
                            {
                                for (_, v) in a.iter_mut() {
                                    *v = tree::Node::Scalar(b"true");
                                }
                            }
                        }
                    }
                }
            }
            Hidden::BankDetails => {
                if let Some(f) = obj.field_mut(b"funding").and_then(|n| n.as_object_mut()) {
                    f.unset(b"method");
                    if let Some(tree::Node::Arr(a)) = f.field_mut(b"attempts") {
                        for a in a.iter_mut() {
                            if let Some(a) = a.as_object_mut() {
                                a.unset(b"rail_ref");
                            }
                        }
                    }
                }
                if let Some(reqs) = obj.field_mut(b"requests").and_then(|n| n.as_object_mut()) {
                    for (_, r) in reqs.iter_mut() {
                        if let Some(r) = r.as_object_mut() {
                            r.unset(b"rail_ref");
                        }
                    }
                }
            }
            Hidden::Contacts => {
                if let Some(ps) = obj
                    .field_mut(b"participants")
                    .and_then(|n| n.as_object_mut())
                {
                    for (_, p) in ps.iter_mut() {
                        if let Some(p) = p.as_object_mut() {
                            p.unset(b"email");
                            p.unset(b"name");
                        }
                    }
                }
            }
            Hidden::Ledger => obj.set(b"ledger", NULL),
            Hidden::Requests => obj.set(b"requests", tree::Node::Obj(Vec::new())),
            Hidden::Disputes => {
                obj.set(b"disputes", tree::Node::Obj(Vec::new()));
                if let Some(reqs) = obj.field_mut(b"requests").and_then(|n| n.as_object_mut()) {
                    for (_, r) in reqs.iter_mut() {
                        let Some(r) = r.as_object_mut() else {
                            continue;
                        };
                        if quoted(r.field_mut(b"mandate"), &[DISPUTE_MANDATE]) {
                            r.unset(b"mandate");
                        }
                        if quoted(r.field_mut(b"failure"), DISPUTE_FAILURES) {
                            r.unset(b"failure");
                        }
                    }
                }
            }
        }
    }
    if hides_rail_refs(vis) {
        obj.unset(b"rail_refs");
        obj.unset(b"held_notices");
    }
    if !shows_failures(vis) {
        if let Some(f) = obj.field_mut(b"funding").and_then(|n| n.as_object_mut()) {
            if f.field_mut(b"failed_attempts").is_some() {
                f.set(b"failed_attempts", NULL);
            }
            if let Some(tree::Node::Arr(a)) = f.field_mut(b"attempts") {
                a.retain_mut(|a| {
                    let status = a.as_object_mut().and_then(|a| a.field_mut(b"status"));
                    !quoted(status, FAILED_ATTEMPTS)
                });
                for a in a.iter_mut().filter_map(|a| a.as_object_mut()) {
                    for k in FAILURE_KEYS {
                        a.unset(k.as_bytes());
                    }
                }
            }
        }
    }
}

/// Whether `n` is a JSON string, as written, equal to one of `texts`.
fn quoted(n: Option<&mut tree::Node<'_>>, texts: &[&str]) -> bool {
    matches!(n, Some(tree::Node::Scalar(b))
    if texts.iter().any(|t| {
        b.len() == t.len() + 2
            && b.starts_with(b"\"")
            && b.ends_with(b"\"")
            && &b[1..b.len() - 1] == t.as_bytes()
    }))
}

/// [`redact_event`] on a tree.
fn redact_event_tree(v: &mut tree::Node<'_>, vis: &Visibility) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    if let Some(data) = obj.field_mut(b"data").and_then(|n| n.as_object_mut()) {
        for h in &vis.hide {
            let keys: &[&str] = match h {
                Hidden::Amounts => AMOUNT_KEYS,
                Hidden::BankDetails => BANK_KEYS,
                Hidden::Contacts => CONTACT_KEYS,
                Hidden::Disputes => &["reason", "note"],
                _ => &[],
            };
            for k in keys {
                data.unset(k.as_bytes());
            }
        }
    }
    obj.unset(b"prev");
    let redacted: &[u8] = if vis.hide.is_empty() {
        b"false"
    } else {
        b"true"
    };
    obj.set(b"redacted", tree::Node::Scalar(redacted));
}

/// Just enough JSON to redact what serde_json wrote: a tree over the bytes whose
/// scalars and keys stay as written, and whose objects are written with their keys in
/// sorted order (as `serde_json::Map` holds them).
mod tree {
    use std::cmp::Ordering;

    /// A JSON value borrowing its text.
    pub(super) enum Node<'a> {
        /// A string (with its quotes), number, `true`, `false` or `null`, as written.
        Scalar(&'a [u8]),
        /// An array.
        Arr(Vec<Node<'a>>),
        /// An object: keys as written between their quotes, and values.
        Obj(Vec<(&'a [u8], Node<'a>)>),
    }

    /// An object's entries.
    pub(super) type Entries<'a> = Vec<(&'a [u8], Node<'a>)>;

    impl<'a> Node<'a> {
        pub(super) fn as_object_mut(&mut self) -> Option<&mut Entries<'a>> {
            match self {
                Node::Obj(entries) => Some(entries),
                _ => None,
            }
        }

        /// Writes compact JSON, object keys sorted.
        pub(super) fn write(&self, out: &mut Vec<u8>) {
            match self {
                Node::Scalar(s) => out.extend_from_slice(s),
                Node::Arr(items) => {
                    out.push(b'[');
                    for (i, n) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        n.write(out);
                    }
                    out.push(b']');
                }
                Node::Obj(entries) => {
                    let mut order: Vec<&(&[u8], Node<'_>)> = entries.iter().collect();
                    order.sort_by(|a, b| key_cmp(a.0, b.0));
                    out.push(b'{');
                    for (i, (k, n)) in order.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.push(b'"');
                        out.extend_from_slice(k);
                        out.extend_from_slice(b"\":");
                        n.write(out);
                    }
                    out.push(b'}');
                }
            }
        }
    }

    /// What redaction does to an object.
    pub(super) trait ObjectExt<'a> {
        fn field_mut(&mut self, key: &[u8]) -> Option<&mut Node<'a>>;
        /// Sets `key` (replacing its value, or adding it).
        fn set(&mut self, key: &'a [u8], n: Node<'a>);
        fn unset(&mut self, key: &[u8]);
    }

    impl<'a> ObjectExt<'a> for Entries<'a> {
        fn field_mut(&mut self, key: &[u8]) -> Option<&mut Node<'a>> {
            self.iter_mut().find(|(k, _)| *k == key).map(|(_, n)| n)
        }

        fn set(&mut self, key: &'a [u8], n: Node<'a>) {
            match self.field_mut(key) {
                Some(slot) => *slot = n,
                None => self.push((key, n)),
            }
        }

        fn unset(&mut self, key: &[u8]) {
            self.retain(|(k, _)| *k != key);
        }
    }

    /// Keys compare as the strings they stand for (as written unless escaped).
    fn key_cmp(a: &[u8], b: &[u8]) -> Ordering {
        if !a.contains(&b'\\') && !b.contains(&b'\\') {
            return a.cmp(b);
        }
        let text = |k: &[u8]| -> String {
            let mut quoted = Vec::with_capacity(k.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(k);
            quoted.push(b'"');
            crate::json::string(&quoted).unwrap_or_default()
        };
        text(a).cmp(&text(b))
    }

    /// Parses one JSON value filling `b` (surrounding whitespace allowed).
    pub(super) fn parse(b: &[u8]) -> Option<Node<'_>> {
        let mut p = Parser { b, i: 0 };
        let n = p.value(0)?;
        p.ws();
        (p.i == b.len()).then_some(n)
    }

    struct Parser<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Parser<'a> {
        fn ws(&mut self) {
            while self.b.get(self.i).is_some_and(u8::is_ascii_whitespace) {
                self.i += 1;
            }
        }

        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            let ok = self.b.get(self.i) == Some(&c);
            if ok {
                self.i += 1;
            }
            ok
        }

        /// A string's bytes between its quotes (the opening quote is next).
        fn string(&mut self) -> Option<&'a [u8]> {
            if !self.eat(b'"') {
                return None;
            }
            let start = self.i;
            loop {
                match *self.b.get(self.i)? {
                    b'"' => break,
                    b'\\' => self.i += 2,
                    _ => self.i += 1,
                }
            }
            let s = self.b.get(start..self.i)?;
            self.i += 1;
            Some(s)
        }

        fn value(&mut self, depth: usize) -> Option<Node<'a>> {
            if depth > 128 {
                return None;
            }
            self.ws();
            match *self.b.get(self.i)? {
                b'{' => {
                    self.i += 1;
                    let mut entries = Vec::new();
                    if self.eat(b'}') {
                        return Some(Node::Obj(entries));
                    }
                    loop {
                        let k = self.string()?;
                        if !self.eat(b':') {
                            return None;
                        }
                        entries.push((k, self.value(depth + 1)?));
                        if self.eat(b'}') {
                            return Some(Node::Obj(entries));
                        }
                        if !self.eat(b',') {
                            return None;
                        }
                    }
                }
                b'[' => {
                    self.i += 1;
                    let mut items = Vec::new();
                    if self.eat(b']') {
                        return Some(Node::Arr(items));
                    }
                    loop {
                        items.push(self.value(depth + 1)?);
                        if self.eat(b']') {
                            return Some(Node::Arr(items));
                        }
                        if !self.eat(b',') {
                            return None;
                        }
                    }
                }
                b'"' => {
                    let start = self.i;
                    self.string()?;
                    Some(Node::Scalar(self.b.get(start..self.i)?))
                }
                _ => {
                    let start = self.i;
                    while self.b.get(self.i).is_some_and(|c| {
                        !matches!(c, b',' | b']' | b'}') && !c.is_ascii_whitespace()
                    }) {
                        self.i += 1;
                    }
                    (self.i > start).then(|| Node::Scalar(&self.b[start..self.i]))
                }
            }
        }
    }
}
