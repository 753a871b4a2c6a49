//! `PaymentState::to_json` (the core's own JSON writer) against serde: byte for byte
//! what `serde_json::to_vec` writes from the derived `Serialize` impls.
//!
//! - every golden vector's history, folded one event at a time, compared after every
//!   event (tampered vectors: up to where folding stops);
//! - the string escaper through the state: every character 0..=0x7f and some
//!   multi-byte ones in every kind of string the state holds (values and map keys);
//! - generated states: every member of every struct the state serializes, with
//!   arbitrary strings (control characters, quotes, non-ASCII), ids, hashes,
//!   timestamps (to the ends of `i64`), amounts (negative, negative zero, 28
//!   digits, several currencies), optional and empty members present or not, every
//!   enum variant.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rust_decimal::Decimal;
use trustfold_core::event::{Allocation, DisputeOutcome, FundingMethod};
use trustfold_core::fold;
use trustfold_core::hash::Hash;
use trustfold_core::history;
use trustfold_core::id::{LegId, PartyId, PaymentId, RequestId, TenantId};
use trustfold_core::ledger::{Account, Balance, Ledger, Leg, LegStatus};
use trustfold_core::map::SortedMap;
use trustfold_core::money::{Currency, Money};
use trustfold_core::policy::{BorneBy, Rail, Role};
use trustfold_core::state::{
    Dispute, FeeLine, Funding, FundingAttempt, FundingStatus, Mandate, Participant, PaymentState,
    PolicyPin, RailTarget, Request, RequestKind, RequestStatus, Status,
};
use trustfold_core::time::Timestamp;
use uuid::Uuid;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Panics with both texts unless the writer and serde agree on `s`.
fn assert_same(s: &PaymentState, what: &str) {
    let ours = s.to_json();
    let serde = serde_json::to_vec(s).expect("serializes");
    if ours != serde {
        panic!(
            "{what}: to_json differs from serde_json\n  ours: {}\n serde: {}",
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&serde)
        );
    }
}

/// Every history in `tests/vectors/`, sorted by name.
fn histories() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir())
        .expect("vectors dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".history.json"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read"))
        })
        .collect();
    v.sort();
    v
}

/// The states after each event of a history, folded one by one (unverified: a
/// tampered history folds up to the event that cannot be applied).
fn states_after_each_event(history_json: &[u8]) -> Vec<PaymentState> {
    let Ok(records) = history::parse(history_json) else {
        return Vec::new();
    };
    let mut out: Vec<PaymentState> = Vec::new();
    for r in &records {
        let Ok(env) = r.envelope() else { break };
        let next = match out.last() {
            None => fold::start(&env, r.hash),
            Some(s) => {
                let mut s = s.clone();
                fold::apply(&mut s, &env, r.hash).map(|()| s)
            }
        };
        match next {
            Ok(s) => out.push(s),
            Err(_) => break,
        }
    }
    out
}

/// A state with something in every map and list, from the golden vectors.
fn rich_state() -> PaymentState {
    histories()
        .iter()
        .flat_map(|(_, h)| states_after_each_event(h))
        .max_by_key(|s| s.to_json().len())
        .expect("some state")
}

#[test]
fn every_vector_after_every_event() {
    let (mut vectors, mut states) = (0, 0);
    for (name, history) in histories() {
        let all = states_after_each_event(&history);
        vectors += usize::from(!all.is_empty());
        for s in &all {
            assert_same(s, &format!("{name} after seq {}", s.version));
            states += 1;
        }
    }
    eprintln!("{vectors} vectors, {states} states compared");
    assert!(vectors >= 30, "only {vectors} vectors folded");
    assert!(states >= 500, "only {states} states compared");
}

#[test]
fn escaper_matches_serde_json_on_every_ascii_char_and_some_others() {
    let base = rich_state();
    let mut texts: Vec<String> = (0u8..=0x7f).map(|b| char::from(b).to_string()).collect();
    texts.extend(
        [
            "",
            "é",
            "日本語",
            "🦀 crab",
            "\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}",
            "\u{2028}\u{2029}\u{feff}",
            "a\"b\\c/d\u{0}e\u{1f}f\u{7f}g\n\r\t\u{8}\u{c}",
        ]
        .map(String::from),
    );
    let all: String = texts.concat();
    texts.push(all);
    let party = *base.participants.keys().next().expect("a participant");
    for t in &texts {
        let mut s = base.clone();
        s.description = t.clone();
        s.policy.id = t.clone();
        let p = s.participants.get_mut(&party).expect("participant");
        p.name = t.clone();
        p.email = Some(t.clone());
        p.roles.push(Role::new(t.clone()));
        s.rail_refs.insert(t.clone(), RailTarget::Recovery);
        s.fixed_fees_charged.push(t.clone());
        assert_same(&s, &format!("text {t:?}"));
    }
}

// ---------------------------------------------------------------------------
// Generated states
// ---------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => (0u8..0x80).prop_map(char::from),
        1 => any::<char>(),
    ];
    prop::collection::vec(ch, 0..8).prop_map(String::from_iter)
}

fn uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![
        any::<u128>().prop_map(Uuid::from_u128),
        Just(Uuid::nil()),
        Just(Uuid::max()),
    ]
}

fn party() -> impl Strategy<Value = PartyId> {
    uuid().prop_map(PartyId::from_uuid)
}

fn request_id() -> impl Strategy<Value = RequestId> {
    uuid().prop_map(RequestId::from_uuid)
}

fn leg_id() -> impl Strategy<Value = LegId> {
    uuid().prop_map(LegId::from_uuid)
}

fn hash() -> impl Strategy<Value = Hash> {
    prop_oneof![any::<[u8; 32]>().prop_map(Hash), Just(Hash::ZERO)]
}

fn ts() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        // Around now, with and without milliseconds.
        (1_700_000_000i64..1_900_000_000, any::<bool>(), 0i64..1000)
            .prop_map(|(s, whole, ms)| s * 1000 + if whole { 0 } else { ms }),
        // Years 0 to 9999 and a little beyond on either side.
        -62_200_000_000_000i64..253_500_000_000_000,
        // Years -999 to -1 (written `-999` … `-001`).
        -93_700_000_000_000i64..-62_167_219_200_000,
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
    ]
    .prop_map(Timestamp::from_unix_millis)
}

fn money() -> impl Strategy<Value = Money> {
    let currency = prop::sample::select(vec!["USD", "JPY", "KWD", "EUR"])
        .prop_map(|c| Currency::new(c).expect("currency"));
    let mantissa = prop_oneof![
        3 => -100_000i128..100_000,
        2 => any::<i64>().prop_map(i128::from),
        1 => -(1i128 << 95)..(1i128 << 95),
        1 => Just(0i128),
    ];
    (currency, mantissa, any::<bool>()).prop_map(|(c, m, neg)| {
        // The minor units as the scale: the amount already has the currency's scale.
        let scale = c.minor_units();
        let d = Decimal::try_from_i128_with_scale(m, scale).expect("fits 96 bits");
        let money = Money::from_decimal(d, c).expect("at the currency's scale");
        // `neg` of zero makes a negative zero, which serde writes as `-0.00`.
        if neg {
            money.neg()
        } else {
            money
        }
    })
}

fn rail() -> impl Strategy<Value = Rail> {
    prop::sample::select(vec![
        Rail::Ach,
        Rail::Wire,
        Rail::Rtp,
        Rail::Card,
        Rail::Book,
    ])
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        prop::sample::select(vec!["buyer", "seller", "escrow_holder"]).prop_map(Role::new),
        text().prop_map(Role::new),
    ]
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(Status::ALL.to_vec())
}

fn request_kind() -> impl Strategy<Value = RequestKind> {
    prop::sample::select(vec![RequestKind::Release, RequestKind::Refund])
}

fn participant() -> impl Strategy<Value = Participant> {
    (
        prop::collection::vec(role(), 0..3),
        text(),
        prop::option::of(text()),
        any::<[bool; 3]>(),
    )
        .prop_map(
            |(roles, name, email, [joined, agreed, removed])| Participant {
                roles,
                name,
                email,
                joined,
                agreed,
                removed,
            },
        )
}

fn funding_method() -> impl Strategy<Value = FundingMethod> {
    (rail(), text(), text(), text()).prop_map(|(rail, institution, account_last4, holder)| {
        FundingMethod {
            rail,
            institution,
            account_last4,
            holder,
        }
    })
}

fn funding_attempt() -> impl Strategy<Value = FundingAttempt> {
    let status = prop::sample::select(vec![
        FundingStatus::Submitted,
        FundingStatus::Settled,
        FundingStatus::Available,
        FundingStatus::Failed,
        FundingStatus::Returned,
    ]);
    (
        leg_id(),
        money(),
        rail(),
        text(),
        status,
        ts(),
        prop::option::of(ts()),
        prop::option::of(money()),
        prop::option::of(text()),
        prop::option::of(money()),
    )
        .prop_map(
            |(
                leg,
                amount,
                rail,
                rail_ref,
                status,
                submitted_at,
                settled_at,
                short,
                code,
                returned,
            )| {
                FundingAttempt {
                    leg,
                    amount,
                    rail,
                    rail_ref,
                    status,
                    submitted_at,
                    settled_at,
                    short,
                    code,
                    returned,
                }
            },
        )
}

fn funding() -> impl Strategy<Value = Funding> {
    (
        prop::option::of(funding_method()),
        prop::option::of(ts()),
        any::<bool>(),
        any::<u32>(),
        prop::collection::vec(funding_attempt(), 0..3),
    )
        .prop_map(
            |(method, deadline, deadline_missed, failed_attempts, attempts)| Funding {
                method,
                deadline,
                deadline_missed,
                failed_attempts,
                attempts,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    let status = prop::sample::select(vec![
        RequestStatus::AwaitingApprovals,
        RequestStatus::Authorized,
        RequestStatus::Submitted,
        RequestStatus::Settled,
        RequestStatus::Failed,
        RequestStatus::Denied,
        RequestStatus::Cancelled,
    ]);
    let mandate = prop::sample::select(vec![
        Mandate::AutoRelease,
        Mandate::Cancellation,
        Mandate::Expiry,
        Mandate::DisputeResolution,
    ]);
    let allocation = (party(), money()).prop_map(|(party, amount)| Allocation { party, amount });
    let borne_by = prop::sample::select(vec![BorneBy::Payee, BorneBy::Payer]);
    let fee =
        (text(), party(), money(), borne_by).prop_map(|(fee, party, amount, borne_by)| FeeLine {
            fee,
            party,
            amount,
            borne_by,
        });
    (
        (
            request_kind(),
            status,
            prop::collection::vec(allocation, 0..3),
            money(),
            prop::collection::vec(fee, 0..3),
            hash(),
            prop::option::of(mandate),
        ),
        (
            prop::collection::vec((party(), hash()), 0..3),
            prop::collection::vec((party(), text()), 0..3),
            prop::option::of(party()),
            ts(),
            prop::collection::vec(leg_id(), 0..3),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (kind, status, allocations, amount, fees, allocations_hash, mandate),
                (approvals, denials, requested_by, requested_at, legs, rail_ref, failure),
            )| Request {
                kind,
                status,
                allocations,
                amount,
                fees,
                allocations_hash,
                mandate,
                approvals: approvals.into_iter().collect(),
                denials: denials.into_iter().collect(),
                requested_by,
                requested_at,
                legs,
                rail_ref,
                failure,
            },
        )
}

fn dispute() -> impl Strategy<Value = Dispute> {
    let outcome = prop::sample::select(vec![
        DisputeOutcome::Resume,
        DisputeOutcome::Release,
        DisputeOutcome::Refund,
    ]);
    (
        any::<bool>(),
        text(),
        prop::option::of(party()),
        ts(),
        prop::option::of(outcome),
        prop::option::of(request_id()),
    )
        .prop_map(
            |(open, reason, opened_by, opened_at, outcome, resolution_request)| Dispute {
                open,
                reason,
                opened_by,
                opened_at,
                outcome,
                resolution_request,
            },
        )
}

fn rail_target() -> impl Strategy<Value = RailTarget> {
    prop_oneof![
        leg_id().prop_map(RailTarget::Funding),
        request_id().prop_map(RailTarget::Disbursement),
        Just(RailTarget::Recovery),
    ]
}

fn account() -> impl Strategy<Value = Account> {
    prop_oneof![
        prop::sample::select(vec![
            Account::ExternalPayer,
            Account::Clearing,
            Account::Escrow,
            Account::LossReturns,
            Account::ExternalRecovery,
            Account::ExternalPlatform,
        ]),
        party().prop_map(Account::Payee),
        party().prop_map(Account::Fee),
    ]
}

fn ledger() -> impl Strategy<Value = Ledger> {
    let status = prop::sample::select(vec![
        LegStatus::Pending,
        LegStatus::Posted,
        LegStatus::Voided,
    ]);
    let leg = (
        leg_id(),
        account(),
        account(),
        money(),
        status,
        prop::option::of(request_id()),
        any::<u64>(),
        prop::option::of(any::<u64>()),
    )
        .prop_map(
            |(id, from, to, amount, status, group, opened_seq, resolved_seq)| Leg {
                id,
                from,
                to,
                amount,
                status,
                group,
                opened_seq,
                resolved_seq,
            },
        );
    let balance =
        (money(), money(), money()).prop_map(|(posted, pending_in, pending_out)| Balance {
            posted,
            pending_in,
            pending_out,
        });
    (
        prop::collection::vec(leg, 0..4),
        prop::collection::vec((account(), balance), 0..4),
    )
        .prop_map(|(legs, balances)| {
            let mut l = Ledger::new(Currency::new("USD").expect("USD"));
            l.legs = legs;
            l.balances = balances.into_iter().collect();
            l
        })
}

/// The parts of a state (beyond the rich base state's policy document).
type Parts = (
    (
        PaymentId,
        TenantId,
        u64,
        Hash,
        Status,
        PolicyPin,
        Money,
        String,
    ),
    (PartyId, Timestamp, Timestamp, Hash),
    (
        SortedMap<PartyId, Participant>,
        Funding,
        Option<Timestamp>,
        Ledger,
        SortedMap<RequestId, Request>,
        SortedMap<RequestId, Dispute>,
        SortedMap<String, RailTarget>,
    ),
    (
        Vec<String>,
        [bool; 3],
        Option<Status>,
        Option<RequestKind>,
        Vec<LegId>,
    ),
);

fn parts() -> impl Strategy<Value = Parts> {
    let pin = (text(), any::<u32>(), hash()).prop_map(|(id, version, hash)| PolicyPin {
        id,
        version,
        hash,
    });
    (
        (
            uuid().prop_map(PaymentId::from_uuid),
            uuid().prop_map(TenantId::from_uuid),
            any::<u64>(),
            hash(),
            status(),
            pin,
            money(),
            text(),
        ),
        (party(), ts(), ts(), hash()),
        (
            prop::collection::vec((party(), participant()), 0..4)
                .prop_map(|v| v.into_iter().collect::<SortedMap<_, _>>()),
            funding(),
            prop::option::of(ts()),
            ledger(),
            prop::collection::vec((request_id(), request()), 0..3)
                .prop_map(|v| v.into_iter().collect::<SortedMap<_, _>>()),
            prop::collection::vec((request_id(), dispute()), 0..3)
                .prop_map(|v| v.into_iter().collect::<SortedMap<_, _>>()),
            prop::collection::vec((text(), rail_target()), 0..4)
                .prop_map(|v| v.into_iter().collect::<SortedMap<_, _>>()),
        ),
        (
            prop::collection::vec(text(), 0..3),
            any::<[bool; 3]>(),
            prop::option::of(status()),
            prop::option::of(request_kind()),
            prop::collection::vec(leg_id(), 0..3),
        ),
    )
}

fn assemble(base: &PaymentState, p: Parts) -> PaymentState {
    let mut s = base.clone();
    let (
        (payment, tenant, version, head, status, policy, amount, description),
        (initiator, created_at, updated_at, terms_hash),
        (participants, funding, held_since, ledger, requests, disputes, rail_refs),
        (
            fixed_fees_charged,
            [cancelled, expired, closed],
            shortfall_outcome,
            last_settled,
            reversed_legs,
        ),
    ) = p;
    s.payment = payment;
    s.tenant = tenant;
    s.version = version;
    s.head = head;
    s.status = status;
    s.policy = policy;
    s.amount = amount;
    s.description = description;
    s.initiator = initiator;
    s.created_at = created_at;
    s.updated_at = updated_at;
    s.terms_hash = terms_hash;
    s.participants = participants;
    s.funding = funding;
    s.held_since = held_since;
    s.ledger = ledger;
    s.requests = requests;
    s.disputes = disputes;
    s.rail_refs = rail_refs;
    s.fixed_fees_charged = fixed_fees_charged;
    s.reversed_legs = reversed_legs;
    s.cancelled = cancelled;
    s.expired = expired;
    s.closed = closed;
    s.shortfall_outcome = shortfall_outcome;
    s.last_settled = last_settled;
    s
}

fn base() -> &'static PaymentState {
    static BASE: std::sync::OnceLock<PaymentState> = std::sync::OnceLock::new();
    BASE.get_or_init(rich_state)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_states_write_as_serde_does(p in parts()) {
        let s = assemble(base(), p);
        let ours = s.to_json();
        let serde = serde_json::to_vec(&s).expect("serializes");
        prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&serde));
        prop_assert_eq!(ours, serde);
    }
}
