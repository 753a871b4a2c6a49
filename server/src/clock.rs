//! The platform's clock: deadlines, good funds and automatic releases happen on their
//! own.
//!
//! The core never reads a clock: time-driven steps are the `Tick` command (actor role
//! `system`), and [`trustfold_core::decide::next_tick`] says when a payment next has
//! one due. The `clock` read model ([`crate::projections`]) keeps that moment per
//! payment (`payment_clock`, only payments with something due), and the server's clock
//! task, every [`crate::app::Config::tick_interval`], sends `Tick` to each payment whose
//! moment has come, through the same path as any command: decided on the stored state,
//! appended with the version check, streamed live, projected. An integrator may still
//! send `Tick` itself (with its API key and the actor `{"role":"system"}`); a tick with
//! nothing due records nothing.
//!
//! - **One clock per database.** On PostgreSQL the clock runs in the process that runs
//!   the background projection (the projection leader, see [`crate::projections`]), so
//!   many processes do not tick the same payment; if two ever do, the version check
//!   lets one win and the other's tick finds nothing left to do.
//! - **A refused tick** (a rule refuses it, say the policy's fee recipient left) is
//!   logged and tried again after a pause that doubles from [`RETRY_FIRST`] up to
//!   [`RETRY_MAX`], so it neither blocks the other payments nor floods the log; a
//!   tick that failed (a 5xx: the database, a payment that cannot be loaded) after a
//!   pause doubling from [`FAILED_FIRST`] to [`FAILED_MAX`].
//! - **Time** is [`Clock`]: the system clock, or for tests and demonstrations a clock
//!   set ahead ([`Clock::advance`]) so that days pass in a moment. The clock only dates
//!   commands; tokens and keys expire by the system clock.
//!
//! ```
//! use std::time::Duration;
//! use trustfold_server::clock::Clock;
//!
//! let clock = Clock::system();
//! let before = clock.now();
//! clock.advance(Duration::from_secs(3 * 86_400)); // three days pass, for a test
//! assert!(clock.now().unix_millis() - before.unix_millis() >= 3 * 86_400_000);
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use trustfold_core::time::Timestamp;
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::db::{now_us, on_read};

/// The first pause before a refused tick is tried again.
pub const RETRY_FIRST: Duration = Duration::from_secs(60);
/// The longest pause before a refused tick is tried again.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);
/// Payments read from the clock read model at a time (a round reads them all).
const ROUND: i64 = 256;
/// Ticks in flight at once (they share the group commit).
const CONCURRENT: usize = 16;

/// The time commands are judged and dated at: the system clock, plus an offset that
/// only [`Clock::advance`] sets (tests and demonstrations). Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock::default()
    }

    /// Now, by this clock.
    pub fn now(&self) -> Timestamp {
        let ahead = self.ahead_ms.load(Ordering::Acquire);
        Timestamp::from_unix_millis((now_us() / 1000).saturating_add(ahead))
    }

    /// Sets this clock (and its clones) `by` further ahead of the system clock. Time in
    /// a payment never runs backwards, so there is no way back.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::AcqRel);
    }
}

/// A payment whose tick was refused: when to try again, and the pause after that.
struct Refused {
    again_at: Instant,
    pause: Duration,
}

/// Runs the clock until shutdown: every `every`, ticks the payments whose moment came.
pub(crate) async fn run(state: AppState, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut refused: HashMap<Uuid, Refused> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = round(&state, &mut refused).await {
            tracing::warn!(error = %e, "the clock could not tick; trying again");
        }
    }
}

/// One round: the payments due now (in the leader process), each ticked once.
async fn round(state: &AppState, refused: &mut HashMap<Uuid, Refused>) -> Result<(), ApiError> {
    if !state.projector.is_leader().await {
        return Ok(());
    }
    // The clock read model as of every event appended so far.
    state.projector.catch_up().await?;
    let now = state.clock.now();
    let started = Instant::now();
    let mut ticks = JoinSet::new();
    // Page by (moment, payment) through every payment due: payments whose ticks are
    // refused stay due (and first in line), and must not hide the others.
    let mut after = (i64::MIN, Uuid::nil());
    loop {
        let due: Vec<(Uuid, Uuid, i64)> = on_read!(&state.db, pool => {
            sqlx::query_as(
                "SELECT tenant_id, payment_id, due_at_ms FROM payment_clock \
                 WHERE due_at_ms <= $1 AND (due_at_ms > $2 OR (due_at_ms = $2 AND payment_id > $3)) \
                 ORDER BY due_at_ms, payment_id LIMIT $4",
            )
            .bind(now.unix_millis())
            .bind(after.0)
            .bind(after.1)
            .bind(ROUND)
            .fetch_all(pool)
            .await
            .map_err(crate::StoreError::from)?
        });
        let last_page = due.len() < usize::try_from(ROUND).unwrap_or(usize::MAX);
        for (tenant, payment, due_at_ms) in due {
            after = (due_at_ms, payment);
            if refused.get(&payment).is_some_and(|r| r.again_at > started) {
                continue;
            }
            if ticks.len() >= CONCURRENT {
                if let Some(done) = ticks.join_next().await {
                    settle(done, refused);
                }
            }
            let state = state.clone();
            ticks.spawn(async move {
                let outcome = crate::api::payments::tick(&state, tenant, payment).await;
                (payment, outcome)
            });
        }
        if last_page {
            break;
        }
    }
    while let Some(done) = ticks.join_next().await {
        settle(done, refused);
    }
    // A payment refused before whose pause is over was not due this round (or it would
    // have been tried again): something else moved it on; forget it.
    refused.retain(|_, r| r.again_at > started);
    Ok(())
}

/// The first pause before a tick that failed (a 5xx: the database, a payment that
/// cannot be loaded) is tried again.
pub const FAILED_FIRST: Duration = Duration::from_secs(1);
/// The longest pause before a failed tick is tried again.
pub const FAILED_MAX: Duration = Duration::from_secs(60);

/// The pause after a tick refused by a rule (`failed` false: [`RETRY_FIRST`] doubling
/// to [`RETRY_MAX`]) or failed (`failed`: [`FAILED_FIRST`] doubling to [`FAILED_MAX`]),
/// given the payment's pause before, if it had one.
pub fn next_pause(before: Option<Duration>, failed: bool) -> Duration {
    let (first, max) = if failed {
        (FAILED_FIRST, FAILED_MAX)
    } else {
        (RETRY_FIRST, RETRY_MAX)
    };
    before.map_or(first, |p| p.saturating_mul(2).clamp(first, max))
}

/// Notes what became of one tick.
fn settle(
    done: Result<(Uuid, Result<(), ApiError>), tokio::task::JoinError>,
    refused: &mut HashMap<Uuid, Refused>,
) {
    match done {
        Ok((payment, Ok(()))) => {
            refused.remove(&payment);
            tracing::debug!(%payment, "clock tick");
        }
        Ok((payment, Err(e))) => {
            // A tick that kept losing the version race to other commands was refused by
            // no rule: it is tried again as soon as a failure is.
            let failed =
                e.status().is_server_error() || matches!(e, ApiError::VersionConflict { .. });
            let pause = next_pause(refused.get(&payment).map(|r| r.pause), failed);
            if failed {
                // The database or the stored payment, not a rule: tried again sooner.
                tracing::warn!(%payment, error = %e, retry_in = ?pause, "the clock's tick failed");
            } else {
                tracing::warn!(%payment, error = %e, retry_in = ?pause, "the clock's tick was refused");
            }
            refused.insert(
                payment,
                Refused {
                    again_at: Instant::now() + pause,
                    pause,
                },
            );
        }
        Err(e) => tracing::warn!(error = %e, "a clock tick failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_and_failed_ticks_wait_longer_each_time() {
        let mut p = None;
        let mut seen = Vec::new();
        for _ in 0..9 {
            let next = next_pause(p, true);
            seen.push(next.as_secs());
            p = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(next_pause(None, false), RETRY_FIRST);
        assert_eq!(next_pause(Some(RETRY_MAX), false), RETRY_MAX);
        // A refusal after failures starts at the refusal's own first pause.
        assert_eq!(next_pause(Some(FAILED_FIRST), false), RETRY_FIRST);
    }

    #[test]
    fn a_tick_that_lost_the_version_race_is_tried_again_soon() {
        let mut refused = HashMap::new();
        let payment = Uuid::from_bytes([1; 16]);
        let lost = ApiError::VersionConflict {
            expected: 3,
            current: 4,
        };
        settle(Ok((payment, Err(lost))), &mut refused);
        assert_eq!(refused[&payment].pause, FAILED_FIRST);
        let rule = ApiError::Unprocessable {
            code: "fee_recipient_missing",
            message: "x".into(),
            field: None,
        };
        let other = Uuid::from_bytes([2; 16]);
        settle(Ok((other, Err(rule))), &mut refused);
        assert_eq!(refused[&other].pause, RETRY_FIRST);
    }
}
