//! Histories that chain and could be signed, but record what `decide` refuses: the
//! fold refuses them too (`invalid_history` at the forged event), so a server holding
//! the key cannot make a client accept them. Each forgery is checked against the
//! honest history it starts from, which folds.

mod support;

use support::scenarios::{as_, earnest_held, market_with, pid, policy, rid, Sim, BUYER, SELLER};
use trustfold_core::envelope::Envelope;
use trustfold_core::event::{
    DisputeOpened, Event, ParticipantInvited, ParticipantRemoved, RequestCancelled,
};
use trustfold_core::fold::{replay, replay_at};
use trustfold_core::history;
use trustfold_core::prelude::*;

/// The history of `s` with `events` appended as if recorded by `actor` in one command
/// (one causation), correctly chained.
fn forge(s: &Sim, actor: Actor, events: Vec<Event>) -> Vec<u8> {
    let mut sealed = s.d.sealed().to_vec();
    let last = s.d.envelopes().last().expect("events").clone();
    let causation = uuid::Uuid::from_bytes([0xcc; 16]);
    for (i, event) in events.into_iter().enumerate() {
        let env = Envelope {
            prev: sealed.last().expect("sealed").hash,
            seq: last.seq + 1 + i as u64,
            id: EventId::from_bytes([0xe0 + i as u8; 16]),
            schema_version: event.event_type().current_version(),
            actor: actor.clone(),
            causation: Some(causation),
            event,
            ..last.clone()
        };
        sealed.push(env.seal());
    }
    history::write(&sealed)
}

fn refused_at(history: &[u8], seq: u64, needle: &str) {
    let e = replay(history).expect_err("the forged history must not fold");
    assert_eq!((e.code(), e.seq()), ("invalid_history", Some(seq)), "{e}");
    assert!(e.to_string().contains(needle), "{needle:?} in: {e}");
}

/// A marketplace order whose automatic release is authorized (a mandated request).
fn auto_released(n: u8) -> Sim {
    let mut s = market_with(n, policy("marketplace")).expect("market");
    s.hours(72);
    s.tick().expect("tick");
    let (_, r) = s.state().open_request().expect("the automatic release");
    assert!(r.mandate.is_some());
    s
}

#[test]
fn a_party_cannot_call_off_a_mandated_request_without_a_dispute() {
    let s = auto_released(70);
    let request = s.state().open_request().map(|(id, _)| id).expect("request");
    let v = s.state().version;
    let cancel = || {
        Event::RequestCancelled(RequestCancelled {
            request,
            reason: "changed my mind".into(),
        })
    };
    let buyer = || as_(BUYER, "buyer");
    // Alone: the history ends inside the "command".
    refused_at(
        &forge(&s, buyer(), vec![cancel()]),
        v + 1,
        "without opening a dispute",
    );
    // …though the state at that event, a view of the past, still folds.
    assert!(replay_at(&forge(&s, buyer(), vec![cancel()]), v + 1).is_ok());
    // Followed by anything but the dispute.
    let invite = Event::ParticipantInvited(ParticipantInvited {
        party: pid(99),
        roles: vec![Role::new("seller")],
        name: "Stand In".into(),
        email: None,
    });
    refused_at(
        &forge(&s, buyer(), vec![cancel(), invite]),
        v + 2,
        "without opening a dispute",
    );
    // By a role that may not dispute (the seller), even with a dispute after it.
    let dispute = || {
        Event::DisputeOpened(DisputeOpened {
            dispute: rid(9),
            reason: "not as described".into(),
        })
    };
    refused_at(
        &forge(&s, as_(SELLER, "seller"), vec![cancel(), dispute()]),
        v + 1,
        "only be cancelled by opening a dispute",
    );
    // The buyer's dispute in the same command is the honest way: it folds.
    let honest = forge(&s, buyer(), vec![cancel(), dispute()]);
    let st = replay(&honest).expect("a dispute calls the automatic release off");
    assert_eq!(st.status, Status::Disputed);
}

#[test]
fn decide_calls_a_mandated_request_off_only_with_a_dispute() {
    let mut s = auto_released(71);
    let request = s.state().open_request().map(|(id, _)| id).expect("request");
    s.rejects(
        as_(SELLER, "seller"),
        Command::CancelRequest {
            request,
            reason: "no".into(),
        },
        "mandated_request",
    );
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "not as described".into(),
        },
    )
    .expect("dispute");
    let st = replay(&s.d.history()).expect("folds");
    assert_eq!(st.status, Status::Disputed);
}

#[test]
fn no_stand_in_while_money_is_held() {
    let s = earnest_held(72).expect("held");
    let v = s.state().version;
    let agent = || as_(support::scenarios::LISTING_AGENT, "listing_agent");
    // A second seller (a payee, who would approve and be paid) invited while held.
    refused_at(
        &forge(
            &s,
            agent(),
            vec![Event::ParticipantInvited(ParticipantInvited {
                party: pid(98),
                roles: vec![Role::new("seller")],
                name: "Stand In".into(),
                email: None,
            })],
        ),
        v + 1,
        "role `seller`",
    );
    // The seller who agreed removed while held.
    refused_at(
        &forge(
            &s,
            agent(),
            vec![Event::ParticipantRemoved(ParticipantRemoved {
                party: pid(SELLER),
                reason: "replaced".into(),
            })],
        ),
        v + 1,
        "while money is in escrow",
    );
    // A brokerage (no say over the money) may still be invited: it folds.
    let brokerage = forge(
        &s,
        agent(),
        vec![Event::ParticipantInvited(ParticipantInvited {
            party: pid(97),
            roles: vec![Role::new("brokerage")],
            name: "Acme Realty".into(),
            email: None,
        })],
    );
    replay(&brokerage).expect("a role without money power is not locked");
}
