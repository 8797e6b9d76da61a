//! Bounded exponential backoff with jitter for retrying transient failures.
//!
//! Jitter keeps many producers that failed together (a leader change hits them all at once)
//! from retrying in lockstep and knocking over the new leader; the bound keeps a dead cluster
//! from hanging a caller forever.

use std::time::{Duration, Instant};

use rand::Rng as _;

/// Retry limits for one operation.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included. At least 1.
    pub max_attempts: u32,
    /// No retry starts after this much time since the first attempt.
    pub max_elapsed: Duration,
    /// Delay before the first retry (before jitter); it doubles with every retry.
    pub initial_backoff: Duration,
    /// Upper bound of the delay between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts within 30 s, 100 ms doubling up to 5 s: long enough to ride out a leader
    /// election (a few seconds), short enough that a dead cluster fails a command promptly.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            max_elapsed: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The retry state of one operation.
#[derive(Debug)]
pub(crate) struct Backoff<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    attempts: u32,
}

impl<'a> Backoff<'a> {
    /// Starts counting at the first attempt.
    pub(crate) fn start(policy: &'a RetryPolicy) -> Self {
        Backoff {
            policy,
            started: Instant::now(),
            attempts: 1,
        }
    }

    /// Attempts made so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the next attempt, or `None` when the policy allows no more.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        if self.attempts >= self.policy.max_attempts.max(1) {
            return None;
        }
        let exponent = self.attempts.saturating_sub(1).min(20);
        let base = self
            .policy
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.policy.max_backoff);
        // "Equal jitter": between half and all of the base delay.
        let delay = base / 2 + jitter(base / 2);
        if self.started.elapsed() + delay > self.policy.max_elapsed {
            return None;
        }
        self.attempts += 1;
        Some(delay)
    }
}

fn jitter(up_to: Duration) -> Duration {
    let nanos = u64::try_from(up_to.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_jittered_and_bounded() {
        let policy = RetryPolicy {
            max_attempts: 6,
            max_elapsed: Duration::from_secs(3600),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let mut backoff = Backoff::start(&policy);
        let bases = [100, 200, 400, 500, 500];
        for base in bases {
            let delay = backoff.next_delay().expect("within max_attempts");
            let base = Duration::from_millis(base);
            assert!(
                delay >= base / 2 && delay <= base,
                "{delay:?} vs base {base:?}"
            );
        }
        assert_eq!(backoff.attempts(), 6);
        assert_eq!(backoff.next_delay(), None, "6 attempts made");
    }

    #[test]
    fn elapsed_time_bounds_retries() {
        let policy = RetryPolicy {
            max_attempts: 100,
            max_elapsed: Duration::from_millis(10),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(Backoff::start(&policy).next_delay(), None);
    }
}
