//! Rate limits: how many requests a tenant's API keys, and each participant's tokens,
//! may make, and how many failed authentications may come from one client address.
//! Past its limit a request is refused with 429 `rate_limited` and `Retry-After`
//! before anything of it runs (its body is not read, nothing is stored, an
//! `Idempotency-Key` stays free), so one integrator's runaway loop or one widget
//! polling in a tight loop cannot take the server from everyone else, and credentials
//! cannot be guessed at the server's speed.
//!
//! - **Per tenant**: every request made with the tenant's API keys (all its keys share
//!   one budget). Default 1,000 requests a second, bursts of 2,000.
//! - **Per participant**: every request made with a participant's tokens (one payment,
//!   one party; opening the live stream counts once). Default 20 a second, bursts of 40:
//!   a widget reads a handful; a participant's requests never use the tenant's budget,
//!   so one buyer's browser cannot lock its tenant's backend out.
//! - **Failed authentications per client address**: every request whose API key,
//!   participant token or admin token is refused as invalid (401 `unauthorized`: not
//!   issued by this server, tampered with, a key that expired or was revoked) counts
//!   against the address of the TCP peer. Default 60 a minute, bursts of 30. Once an
//!   address has used its budget up, every request from it is refused before its
//!   credential is even checked (so guessing gets no answers and costs no key lookups),
//!   a correct credential included, until one failure's share of the minute has passed.
//!   Successful authentications do not count, nor requests without a credential, nor
//!   participant tokens that are expired (401 `token_expired`) or revoked (401
//!   `token_revoked`): those were signed by this server, so they are no guess, and a
//!   page still holding one must not lock out everyone behind its office's shared
//!   address. An IPv6 client counts by its /64 network (one host's usual share: one
//!   address each would let it guess without limit), an IPv4 address carried in IPv6
//!   as that IPv4 address. Behind a reverse proxy or load balancer that connects from
//!   its own address, every client shares that address's budget: turn the limit off
//!   there (`--rate-limit-failed-auth 0`) and limit failures at the proxy.
//!
//! Limits are kept per server process (in memory, GCRA: through `governor`, and for
//! failed authentications by the same rule in this module, which can tell whether an
//! address is over its limit without counting one more failure): behind a
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
//!
//! // Failed authentications: 60 a minute from one address, bursts of 30.
//! let limits = RateLimits::new(None, None).with_failed_auth(Some(Rate::per_minute(60)));
//! let client = Some("203.0.113.7".parse().unwrap());
//! for _ in 0..30 {
//!     assert!(limits.admit_client(client).is_ok()); // checked before the credential
//!     limits.failed_authentication(client); // the credential was invalid
//! }
//! // Now even a request with a correct credential waits: about a second.
//! let e = limits.admit_client(client).unwrap_err();
//! assert_eq!(e.code(), "rate_limited");
//! assert!(limits.admit_client(Some("203.0.113.8".parse().unwrap())).is_ok());
//! ```

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
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

    /// `n` a minute (at least 1), bursts of half as many (at least 1): the shape of the
    /// failed-authentication limit.
    ///
    /// ```
    /// use trustfold_server::api::limits::Rate;
    /// assert_eq!(Rate::per_minute(60).burst.get(), 30);
    /// assert_eq!(Rate::per_minute(1).burst.get(), 1);
    /// ```
    pub fn per_minute(n: u32) -> Self {
        let requests = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        Rate {
            requests,
            per: Duration::from_secs(60),
            burst: NonZeroU32::new(requests.get() / 2).unwrap_or(NonZeroU32::MIN),
        }
    }

    fn quota(&self) -> Quota {
        let every = self.per / self.requests.get();
        Quota::with_period(every.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.requests))
            .allow_burst(self.burst)
    }

    /// "`n` requests a second (bursts of `m`)", naming them `one` or `many` as `n` is 1
    /// or more.
    fn describe(&self, one: &str, many: &str) -> String {
        let per = match self.per.as_secs() {
            1 => "a second".to_owned(),
            60 => "a minute".to_owned(),
            s if s > 0 => format!("per {s} s"),
            _ => format!("per {} ms", self.per.as_millis()),
        };
        let noun = if self.requests.get() == 1 { one } else { many };
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

/// The default limit on failed authentications per client address of
/// [`crate::app::Config`]: 60 a minute, bursts of 30.
pub fn failed_auth_default() -> Option<Rate> {
    Some(Rate::per_minute(60))
}

/// The budget a client address's failed authentications count against: itself for
/// IPv4, its /64 network for IPv6 (an IPv4 address carried in IPv6 as that address).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Failed authentications per client address, by the same rule as `governor`'s
/// (GCRA), kept here because the request must be refused before its credential is
/// checked, when it is not yet known whether it will fail: `governor` can only ask
/// whether a key is over its limit by counting one more against it, which would count
/// the successful authentications too.
struct FailureBudget {
    rate: Rate,
    /// One failure's share of the period (GCRA's emission interval).
    every: Duration,
    /// The whole budget: `burst` failures' shares.
    whole: Duration,
    /// Per address, when its budget is whole again; an address not here has all of it.
    whole_at: DashMap<IpAddr, Instant>,
}

impl FailureBudget {
    fn new(rate: Rate) -> Self {
        let every = (rate.per / rate.requests.get()).max(Duration::from_nanos(1));
        FailureBudget {
            rate,
            every,
            whole: every.saturating_mul(rate.burst.get()),
            whole_at: DashMap::new(),
        }
    }

    /// `Ok` while `client` may fail once more at `now`, or how long until it may.
    fn check(&self, client: &IpAddr, now: Instant) -> Result<(), Duration> {
        let used = self
            .whole_at
            .get(client)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        match used.saturating_add(self.every).saturating_sub(self.whole) {
            wait if wait.is_zero() => Ok(()),
            wait => Err(wait),
        }
    }

    /// Counts a failure of `client` at `now` (never more than the whole budget: the
    /// failures of requests admitted just before the budget ran out do not stretch it).
    fn fail(&self, client: IpAddr, now: Instant) {
        let mut whole_at = self.whole_at.entry(client).or_insert(now);
        let used = whole_at
            .saturating_duration_since(now)
            .saturating_add(self.every)
            .min(self.whole);
        if let Some(t) = now.checked_add(used) {
            *whole_at = t;
        }
    }

    /// Forgets the addresses whose budgets are whole again.
    fn forget_idle(&self, now: Instant) {
        self.whole_at.retain(|_, whole_at| *whole_at > now);
        self.whole_at.shrink_to_fit();
    }
}

/// The limits of one server process; see the [module docs](self).
pub struct RateLimits {
    tenant: Option<Limit<Uuid>>,
    /// Keyed by payment and party.
    participant: Option<Limit<(Uuid, Uuid)>>,
    /// Failed authentications, by client address.
    failed_auth: Option<FailureBudget>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("tenant", &self.tenant.as_ref().map(|l| l.rate))
            .field("participant", &self.participant.as_ref().map(|l| l.rate))
            .field("failed_auth", &self.failed_auth.as_ref().map(|l| l.rate))
            .finish()
    }
}

impl RateLimits {
    /// Limits per tenant and per participant (`None`: that kind is not limited), and no
    /// limit on failed authentications (see [`RateLimits::with_failed_auth`]).
    pub fn new(tenant: Option<Rate>, participant: Option<Rate>) -> Self {
        RateLimits {
            tenant: tenant.map(Limit::new),
            participant: participant.map(Limit::new),
            failed_auth: None,
        }
    }

    /// These limits with `rate` as the limit on failed authentications per client
    /// address (`None`: not limited).
    pub fn with_failed_auth(mut self, rate: Option<Rate>) -> Self {
        self.failed_auth = rate.map(FailureBudget::new);
        self
    }

    /// Checked before a request's credential: 429 `rate_limited` if `client` (the TCP
    /// peer's address; `None` when unknown, which is not limited) has used up its
    /// budget of failed authentications, whatever credential the request carries.
    pub fn admit_client(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        let (Some(limit), Some(client)) = (&self.failed_auth, client) else {
            return Ok(());
        };
        limit
            .check(&client_key(client), Instant::now())
            .map_err(|wait| ApiError::RateLimited {
                message: format!(
                    "too many failed authentications came from this address: more than {} \
                     on this server; every request from it is refused, whatever its \
                     credential, for the next {} ms; check the credentials it sends",
                    limit
                        .rate
                        .describe("failed authentication", "failed authentications"),
                    wait.as_millis().max(1)
                ),
                retry_after: wait,
            })
    }

    /// Counts a failed authentication from `client` (see the [module docs](self) for
    /// which failures count).
    pub fn failed_authentication(&self, client: Option<IpAddr>) {
        if let (Some(limit), Some(client)) = (&self.failed_auth, client) {
            limit.fail(client_key(client), Instant::now());
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
                            limit.rate.describe("request", "requests"),
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
                limit.rate.describe("request", "requests"),
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
        if let Some(l) = &self.failed_auth {
            l.forget_idle(Instant::now());
        }
    }

    /// How many callers' buckets are held (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.tenant.as_ref().map_or(0, |l| l.limiter.len())
            + self.participant.as_ref().map_or(0, |l| l.limiter.len())
            + self.failed_auth.as_ref().map_or(0, |l| l.whole_at.len())
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

    #[test]
    fn an_address_that_used_its_failures_up_waits_one_failures_share_then_fails_again() {
        // 3 failures, then one every 10 s.
        let budget = FailureBudget::new(Rate {
            requests: NonZeroU32::new(6).expect("6"),
            per: Duration::from_secs(60),
            burst: NonZeroU32::new(3).expect("3"),
        });
        let client: IpAddr = "198.51.100.1".parse().expect("ip");
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(budget.check(&client, t0), Ok(()), "failure {i}");
            budget.fail(client, t0);
        }
        assert_eq!(budget.check(&client, t0), Err(Duration::from_secs(10)));
        // More failures (of requests admitted before it ran out) do not stretch the wait.
        budget.fail(client, t0);
        budget.fail(client, t0);
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(budget.check(&client, later(4)), Err(Duration::from_secs(6)));
        // After one failure's share, one more failure, and no more.
        assert_eq!(budget.check(&client, later(10)), Ok(()));
        budget.fail(client, later(10));
        assert_eq!(
            budget.check(&client, later(10)),
            Err(Duration::from_secs(10))
        );
        // Other addresses are untouched; an address is forgotten once its budget is
        // whole again (30 s after its last failure here), not before.
        assert_eq!(
            budget.check(&"198.51.100.2".parse().expect("ip"), t0),
            Ok(())
        );
        budget.forget_idle(later(39));
        assert_eq!(budget.whole_at.len(), 1);
        budget.forget_idle(later(40));
        assert_eq!(budget.whole_at.len(), 0);
        assert_eq!(budget.check(&client, later(40)), Ok(()));
    }

    #[test]
    fn failures_count_per_ipv4_address_and_per_ipv6_64_network() {
        let limits = RateLimits::new(None, None).with_failed_auth(Some(Rate::per_minute(2)));
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        // Bursts of one: one failure uses the budget up.
        limits.failed_authentication(ip("2001:db8:1:2::1"));
        let e = limits
            .admit_client(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
            .expect_err("the same /64");
        assert_eq!(e.code(), "rate_limited");
        let ApiError::RateLimited { message, .. } = &e else {
            panic!("{e:?}");
        };
        assert!(
            message.contains("too many failed authentications came from this address")
                && message.contains("2 failed authentications a minute (bursts of 1)"),
            "{message}"
        );
        limits
            .admit_client(ip("2001:db8:1:3::1"))
            .expect("another /64");
        // An IPv4 address, whether the peer's socket is IPv4 or IPv6.
        limits.failed_authentication(ip("::ffff:192.0.2.1"));
        limits
            .admit_client(ip("192.0.2.1"))
            .expect_err("the same IPv4 address");
        limits.admit_client(ip("192.0.2.2")).expect("another one");
        // An unknown address is not limited, nor is anyone without the limit.
        limits.failed_authentication(None);
        limits.admit_client(None).expect("no address");
        assert_eq!(limits.tracked(), 2);
        let open = RateLimits::new(None, None).with_failed_auth(None);
        for _ in 0..100 {
            open.failed_authentication(ip("192.0.2.1"));
        }
        open.admit_client(ip("192.0.2.1")).expect("no limit");
        assert_eq!(open.tracked(), 0);
    }
}
