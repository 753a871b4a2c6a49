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

/// True when the request's valid approvals meet the policy's rule.
pub fn quorum_met(state: &PaymentState, req: &Request) -> bool {
    let ok = approvers(state, req);
    count_ok(state, rule(state, req), &ok)
}

fn count_ok(state: &PaymentState, rule: &Approvals, parties: &SortedSet<PartyId>) -> bool {
    let holds = |p: &PartyId, role: &crate::policy::Role| {
        state.participants.get(p).is_some_and(|x| x.acts_as(role))
    };
    match rule {
        Approvals::None => true,
        // One distinct party per listed role: a party holding two of the roles (a
        // seller who is also invited as the buyer) approves once, not for both.
        Approvals::AllOf(roles) => {
            let parties: Vec<PartyId> = parties.iter().copied().collect();
            let mut used = vec![false; parties.len()];
            assign(roles, &parties, &mut used, &holds)
        }
        Approvals::NOf { n, roles } => {
            let c = parties
                .iter()
                .filter(|p| roles.iter().any(|r| holds(p, r)))
                .count();
            c >= *n as usize
        }
    }
}

/// Whether each of `roles` can be given its own party among the unused `parties`
/// (a matching found by backtracking: role lists are a handful long).
fn assign(
    roles: &[crate::policy::Role],
    parties: &[PartyId],
    used: &mut [bool],
    holds: &impl Fn(&PartyId, &crate::policy::Role) -> bool,
) -> bool {
    let Some((role, rest)) = roles.split_first() else {
        return true;
    };
    for i in 0..parties.len() {
        if !used[i] && holds(&parties[i], role) {
            used[i] = true;
            if assign(rest, parties, used, holds) {
                return true;
            }
            used[i] = false;
        }
    }
    false
}

/// True while the request could still reach quorum if every eligible party who has
/// not denied it approved.
pub fn quorum_possible(state: &PaymentState, req: &Request) -> bool {
    let eligible: SortedSet<PartyId> = state
        .participants
        .iter()
        .filter(|(id, p)| !p.removed && p.joined && !req.denials.contains_key(id))
        .map(|(id, _)| *id)
        .collect();
    count_ok(state, rule(state, req), &eligible)
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
