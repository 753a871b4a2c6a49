//! Forged histories for the fold's tests: events a server holding the key could
//! append or rewrite, correctly chained, that `decide` would never have written.
#![allow(dead_code)]

use trustfold_core::envelope::{Envelope, SealedEvent};
use trustfold_core::event::Event;
use trustfold_core::hash::Hash;
use trustfold_core::history;
use trustfold_core::prelude::*;

use super::scenarios::{market_with, policy, Sim};

/// The history of `s` with `events` appended as if recorded by `actor` in one command
/// (one causation), correctly chained.
pub fn forge(s: &Sim, actor: Actor, events: Vec<Event>) -> Vec<u8> {
    let cause = Some(uuid::Uuid::from_bytes([0xcc; 16]));
    forge_each(
        s,
        events
            .into_iter()
            .map(|e| (actor.clone(), cause, e))
            .collect(),
    )
}

/// [`forge`] with each event's own actor and causation.
pub fn forge_each(s: &Sim, events: Vec<(Actor, Option<uuid::Uuid>, Event)>) -> Vec<u8> {
    let last = s.d.envelopes().last().expect("events").at;
    forge_each_at(s, last, events)
}

/// [`forge`] recorded at `at` (the others take the time of the last event of `s`).
pub fn forge_at(s: &Sim, at: Timestamp, actor: Actor, events: Vec<Event>) -> Vec<u8> {
    let cause = Some(uuid::Uuid::from_bytes([0xcc; 16]));
    let events = events.into_iter().map(|e| (actor.clone(), cause, e));
    forge_each_at(s, at, events.collect())
}

fn forge_each_at(
    s: &Sim,
    at: Timestamp,
    events: Vec<(Actor, Option<uuid::Uuid>, Event)>,
) -> Vec<u8> {
    let mut sealed = s.d.sealed().to_vec();
    let last = s.d.envelopes().last().expect("events").clone();
    for (i, (actor, causation, event)) in events.into_iter().enumerate() {
        let env = Envelope {
            prev: sealed.last().expect("sealed").hash,
            seq: last.seq + 1 + i as u64,
            id: EventId::from_bytes([0xe0 + i as u8; 16]),
            schema_version: event.event_type().current_version(),
            actor,
            causation,
            event,
            at,
            ..last.clone()
        };
        sealed.push(env.seal());
    }
    history::write(&sealed)
}

/// Re-chains `history` after `edit` rewrote each event's text (given its index). Each
/// event is sealed again first, which writes its type's current version: an edit that
/// wants an older one says so.
pub fn rewrite(history_json: &[u8], edit: impl Fn(usize, String) -> String) -> Vec<u8> {
    let mut sealed: Vec<SealedEvent> = Vec::new();
    for (i, r) in history::parse(history_json)
        .expect("parse")
        .iter()
        .enumerate()
    {
        let mut env = r.envelope().expect("env");
        env.prev = sealed.last().map_or(Hash::ZERO, |x| x.hash);
        let body = edit(i, String::from_utf8(env.seal().body).expect("utf8"));
        sealed.push(SealedEvent {
            hash: Hash::of(body.as_bytes()),
            body: body.into_bytes(),
        });
    }
    history::write(&sealed)
}

/// `t` (the first event's text) as written by a server before `PaymentInitiated` v2.
pub fn opened_as_v1(t: String) -> String {
    t.replacen(
        r#""type":"PaymentInitiated","v":2"#,
        r#""type":"PaymentInitiated","v":1"#,
        1,
    )
}

/// A marketplace order whose automatic release is authorized (a mandated request).
pub fn auto_released(n: u8) -> Sim {
    auto_released_with(n, policy("marketplace"))
}

/// [`auto_released`] under another policy (same roles).
pub fn auto_released_with(n: u8, p: Policy) -> Sim {
    let mut s = market_with(n, p).expect("market");
    s.hours(72);
    s.tick().expect("tick");
    let (_, r) = s.state().open_request().expect("the automatic release");
    assert!(r.mandate.is_some());
    s
}
