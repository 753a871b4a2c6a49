//! Quorum: whether a request's approvals satisfy the pinned policy.
//!
//! An approval counts only if it approved the request's current allocations hash
//! (amending the allocations voids earlier approvals) and its party is still an active
//! participant holding an approving role. `all_of` needs one approval per listed role,
//! each from a different party (a party holding two of the roles counts for one);
//! `n_of` needs `n` distinct parties among the listed roles.

use crate::id::PartyId;
use crate::map::SortedSet;
use crate::policy::Approvals;
use crate::state::{PaymentState, Request, RequestKind};

fn rule<'a>(state: &'a PaymentState, req: &Request) -> &'a Approvals {
    state.policy_doc.approvals(req.kind == RequestKind::Refund)
}

fn approvers(state: &PaymentState, req: &Request) -> SortedSet<PartyId> {
    req.approvals
        .iter()
        .filter(|(_, h)| **h == req.allocations_hash)
        .filter(|(p, _)| state.participants.get(p).is_some_and(|x| !x.removed))
        .map(|(p, _)| *p)
        .collect()
}

/// True when the request's valid approvals meet the policy's rule, each role of an
/// `all_of` approved by a party of its own (what `decide` requires before it
/// authorizes a request).
pub fn quorum_met(state: &PaymentState, req: &Request) -> bool {
    let ok = approvers(state, req);
    count_ok(state, rule(state, req), &ok, true)
}

/// [`quorum_met`] as histories were written before `all_of` needed distinct parties
/// (one party holding two listed roles counted for both): what the fold checks a
/// recorded authorization against, so that histories stored before then still fold.
pub fn quorum_met_as_recorded(state: &PaymentState, req: &Request) -> bool {
    let ok = approvers(state, req);
    count_ok(state, rule(state, req), &ok, false)
}

fn count_ok(
    state: &PaymentState,
    rule: &Approvals,
    parties: &SortedSet<PartyId>,
    distinct: bool,
) -> bool {
    let holds = |p: &PartyId, role: &crate::policy::Role| {
        state.participants.get(p).is_some_and(|x| x.acts_as(role))
    };
    match rule {
        Approvals::None => true,
        // One distinct party per listed role: a party holding two of the roles (a
        // seller who is also invited as the buyer) approves once, not for both.
        Approvals::AllOf(roles) if distinct => {
            let parties: Vec<PartyId> = parties.iter().copied().collect();
            matched(roles, &parties, &holds) == roles.len()
        }
        Approvals::AllOf(roles) => roles
            .iter()
            .all(|role| parties.iter().any(|p| holds(p, role))),
        Approvals::NOf { n, roles } => {
            let c = parties
                .iter()
                .filter(|p| roles.iter().any(|r| holds(p, r)))
                .count();
            c >= *n as usize
        }
    }
}

/// How many of `roles` can each be given a party of their own among `parties`: a
/// maximum bipartite matching by augmenting paths (Kuhn's), polynomial in the number
/// of roles and parties whatever the policy lists.
fn matched(
    roles: &[crate::policy::Role],
    parties: &[PartyId],
    holds: &impl Fn(&PartyId, &crate::policy::Role) -> bool,
) -> usize {
    // The role each party is matched to, if any.
    let mut owner: Vec<Option<usize>> = vec![None; parties.len()];
    let mut count = 0;
    for r in 0..roles.len() {
        let mut seen = vec![false; parties.len()];
        if augment(r, roles, parties, holds, &mut owner, &mut seen) {
            count += 1;
        }
    }
    count
}

/// Finds a party for role `r`, moving earlier roles to other parties if need be.
fn augment(
    r: usize,
    roles: &[crate::policy::Role],
    parties: &[PartyId],
    holds: &impl Fn(&PartyId, &crate::policy::Role) -> bool,
    owner: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    for p in 0..parties.len() {
        if seen[p] || !holds(&parties[p], &roles[r]) {
            continue;
        }
        seen[p] = true;
        let free = match owner[p] {
            None => true,
            Some(other) => augment(other, roles, parties, holds, owner, seen),
        };
        if free {
            owner[p] = Some(r);
            return true;
        }
    }
    false
}

/// True while the request could still reach quorum if every eligible party who has
/// not denied it approved. A party holding two roles of an `all_of` counts for both
/// here, though authorization needs a party of its own for each ([`quorum_met`]): a
/// denial never closed a request that such a party could still approve alone, and a
/// party who denied may approve after all, so stored histories of v2 payments go on
/// from such a request (one approved later by distinct parties was authorized).
pub fn quorum_possible(state: &PaymentState, req: &Request) -> bool {
    let eligible: SortedSet<PartyId> = state
        .participants
        .iter()
        .filter(|(id, p)| !p.removed && p.joined && !req.denials.contains_key(id))
        .map(|(id, _)| *id)
        .collect();
    count_ok(state, rule(state, req), &eligible, false)
}

/// True when the payment's joined, active participants could between them give a
/// request of `kind` the approvals the policy needs, a party of its own for each role
/// an `all_of` lists (so co-sellers listed as `["seller", "seller"]` need two sellers).
/// `decide` takes no funding while this is false: once money arrives no one may join an
/// approving role (`role_locked`), and the request could never be approved.
///
/// ```
/// use trustfold_core::{approval::quorum_reachable, fold::replay, state::RequestKind};
/// let history = include_bytes!("../tests/vectors/em_happy_wire.history.json");
/// let s = replay(history)?;
/// assert!(quorum_reachable(&s, RequestKind::Release));
/// assert!(quorum_reachable(&s, RequestKind::Refund));
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn quorum_reachable(state: &PaymentState, kind: RequestKind) -> bool {
    let joined: SortedSet<PartyId> = state
        .participants
        .iter()
        .filter(|(_, p)| !p.removed && p.joined)
        .map(|(id, _)| *id)
        .collect();
    count_ok(
        state,
        state.policy_doc.approvals(kind == RequestKind::Refund),
        &joined,
        true,
    )
}

/// True when `party` may approve requests of this kind (holds an approving role).
pub fn may_approve(state: &PaymentState, kind: RequestKind, party: &PartyId) -> bool {
    let Some(p) = state.participants.get(party) else {
        return false;
    };
    state
        .policy_doc
        .approvals(kind == RequestKind::Refund)
        .roles()
        .iter()
        .any(|r| p.acts_as(r))
}
