//! Rate limits: how many requests a tenant's API keys, and each participant's tokens,
//! may make. Past its limit a request is refused with 429 `rate_limited` and
//! `Retry-After` before anything of it runs (its body is not read, nothing is stored,
//! an `Idempotency-Key` stays free), so one integrator's runaway loop or one widget
//! polling in a tight loop cannot take the server from everyone else.
//!
//! - **Per tenant**: every request made with the tenant's API keys (all its keys share
//!   one budget). Default 1,000 requests a second, bursts of 2,000.
//! - **Per participant**: every request made with a participant's tokens (one payment,
//!   one party; opening the live stream counts once). Default 20 a second, bursts of 40:
//!   a widget reads a handful; a participant's requests never use the tenant's budget,
//!   so one buyer's browser cannot lock its tenant's backend out.
//!
//! Limits are kept per server process (in memory, GCRA through `governor`): behind a
//! load balancer over N processes a tenant may reach up to N times the limit, so set
//! each process's share. The clock and the webhook sender are not limited.
//!
//! ```
//! use std::time::Duration;
//! use trustfold_server::api::limits::{Rate, RateLimits};
//! let limits = RateLimits::new(Some(Rate::per_second(2)), None);
//! let tenant = uuid::Uuid::new_v4();
//! // A burst of twice the rate passes, the next request waits.
//! assert!(limits.admit_tenant(tenant).is_ok());
//! assert!(limits.admit_tenant(tenant).is_ok());
//! assert!(limits.admit_tenant(tenant).is_ok());
//! assert!(limits.admit_tenant(tenant).is_ok());
//! let e = limits.admit_tenant(tenant).unwrap_err();
//! assert_eq!(e.code(), "rate_limited");
//! // Another tenant has its own budget.
//! assert!(limits.admit_tenant(uuid::Uuid::new_v4()).is_ok());
//! ```

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use super::auth::Principal;
use super::error::ApiError;

/// A rate: `requests` per `per`, with bursts of up to `burst` requests at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub requests: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// The most requests let through at once (the bucket's size).
    pub burst: NonZeroU32,
}

impl Rate {
    /// `n` requests a second (at least 1), bursts of `2n`.
    ///
    /// ```
    /// use trustfold_server::api::limits::Rate;
    /// assert_eq!(Rate::per_second(20).burst.get(), 40);
    /// ```
    pub fn per_second(n: u32) -> Self {
        let requests = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        Rate {
            requests,
            per: Duration::from_secs(1),
            burst: requests.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)),
        }
    }

    fn quota(&self) -> Quota {
        let every = self.per / self.requests.get();
        Quota::with_period(every.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.requests))
            .allow_burst(self.burst)
    }

    fn describe(&self) -> String {
        let per = match self.per.as_secs() {
            1 => "a second".to_owned(),
            60 => "a minute".to_owned(),
            s if s > 0 => format!("per {s} s"),
            _ => format!("per {} ms", self.per.as_millis()),
        };
        let noun = if self.requests.get() == 1 {
            "request"
        } else {
            "requests"
        };
        format!("{} {noun} {per} (bursts of {})", self.requests, self.burst)
    }
}

/// The default limits of [`crate::app::Config`]: 1,000 requests a second per tenant,
/// 20 per participant.
pub fn defaults() -> (Option<Rate>, Option<Rate>) {
    (Some(Rate::per_second(1000)), Some(Rate::per_second(20)))
}

struct Limit<K: std::hash::Hash + Eq + Clone> {
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    fn new(rate: Rate) -> Self {
        Limit {
            rate,
            limiter: RateLimiter::keyed(rate.quota()),
        }
    }

    /// `Ok`, or how long until the next request may pass.
    fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

/// The limits of one server process; see the [module docs](self).
pub struct RateLimits {
    tenant: Option<Limit<Uuid>>,
    /// Keyed by payment and party.
    participant: Option<Limit<(Uuid, Uuid)>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("tenant", &self.tenant.as_ref().map(|l| l.rate))
            .field("participant", &self.participant.as_ref().map(|l| l.rate))
            .finish()
    }
}

impl RateLimits {
    /// Limits per tenant and per participant (`None`: that kind is not limited).
    pub fn new(tenant: Option<Rate>, participant: Option<Rate>) -> Self {
        RateLimits {
            tenant: tenant.map(Limit::new),
            participant: participant.map(Limit::new),
        }
    }

    /// Counts a request by `principal`; past its limit, 429 `rate_limited`.
    pub fn admit(&self, principal: &Principal) -> Result<(), ApiError> {
        match principal {
            Principal::Tenant { tenant } => self.admit_tenant(*tenant),
            Principal::Participant(c) => {
                let Some(limit) = &self.participant else {
                    return Ok(());
                };
                limit
                    .check(&(c.payment, c.party))
                    .map_err(|wait| ApiError::RateLimited {
                        message: format!(
                            "this participant's tokens made more than {} on this server; \
                             retry after {} ms",
                            limit.rate.describe(),
                            wait.as_millis().max(1)
                        ),
                        retry_after: wait,
                    })
            }
        }
    }

    /// Counts a request made with `tenant`'s API keys.
    pub fn admit_tenant(&self, tenant: Uuid) -> Result<(), ApiError> {
        let Some(limit) = &self.tenant else {
            return Ok(());
        };
        limit.check(&tenant).map_err(|wait| ApiError::RateLimited {
            message: format!(
                "this tenant's API keys made more than {} on this server; retry after {} ms",
                limit.rate.describe(),
                wait.as_millis().max(1)
            ),
            retry_after: wait,
        })
    }

    /// Forgets the callers whose buckets are full again (idle ones), so the limits'
    /// memory follows the active callers, not every caller ever seen. Run every minute
    /// by the server.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.tenant {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
        if let Some(l) = &self.participant {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
    }

    /// How many callers' buckets are held (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.tenant.as_ref().map_or(0, |l| l.limiter.len())
            + self.participant.as_ref().map_or(0, |l| l.limiter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_idle_callers_are_forgotten() {
        let per_minute = Rate {
            requests: NonZeroU32::new(1).expect("1"),
            per: Duration::from_secs(60),
            burst: NonZeroU32::new(3).expect("3"),
        };
        let limits = RateLimits::new(Some(per_minute), None);
        let t = Uuid::new_v4();
        for _ in 0..3 {
            limits.admit_tenant(t).expect("within the burst");
        }
        let e = limits.admit_tenant(t).expect_err("over");
        let ApiError::RateLimited {
            retry_after,
            message,
        } = &e
        else {
            panic!("{e:?}");
        };
        // The next request passes once one request's share of the minute has passed.
        assert!(
            *retry_after > Duration::from_secs(50) && *retry_after <= Duration::from_secs(60),
            "{retry_after:?}"
        );
        assert!(
            message.contains("1 request a minute (bursts of 3)"),
            "{message}"
        );
        assert_eq!(e.status().as_u16(), 429);
        assert_eq!(limits.tracked(), 1);
        // Not idle: its bucket is empty, so it is kept.
        limits.forget_idle();
        assert_eq!(limits.tracked(), 1);

        // Unlimited kinds pass everything.
        let open = RateLimits::new(None, None);
        for _ in 0..10_000 {
            open.admit_tenant(t).expect("no limit");
        }
        assert_eq!(open.tracked(), 0);

        // A caller whose bucket refilled is forgotten.
        let fast = RateLimits::new(
            Some(Rate {
                requests: NonZeroU32::new(1000).expect("n"),
                per: Duration::from_millis(1),
                burst: NonZeroU32::new(1).expect("1"),
            }),
            None,
        );
        fast.admit_tenant(t).expect("first");
        std::thread::sleep(Duration::from_millis(5));
        fast.forget_idle();
        assert_eq!(fast.tracked(), 0);
    }
}
