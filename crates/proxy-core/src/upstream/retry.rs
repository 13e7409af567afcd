//! The retry budget: how many requests of an upstream may be on a second try at once.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Retries in progress on one upstream: at most 20 % of its pending requests, and at least
/// 3 (Envoy's retry budget), so a failing upstream sees at most a fifth more load from
/// retries instead of five times as much.
#[derive(Default)]
pub(super) struct RetryBudget {
    active: AtomicUsize,
}

const RETRY_BUDGET_PERCENT: usize = 20;
const RETRY_BUDGET_MIN: usize = 3;

impl RetryBudget {
    pub(super) fn acquire(&self, pending: usize) -> Option<RetryPermit<'_>> {
        let allowed = (pending * RETRY_BUDGET_PERCENT / 100).max(RETRY_BUDGET_MIN);
        let mut active = self.active.load(Ordering::Relaxed);
        loop {
            if active >= allowed {
                return None;
            }
            match self.active.compare_exchange_weak(
                active,
                active + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(RetryPermit(&self.active)),
                Err(now) => active = now,
            }
        }
    }
}

pub(super) struct RetryPermit<'a>(&'a AtomicUsize);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_is_a_fifth_of_pending_and_at_least_three() {
        let budget = RetryBudget::default();
        let few: Vec<_> = (0..3).map(|_| budget.acquire(1)).collect();
        assert!(few.iter().all(Option::is_some));
        assert!(
            budget.acquire(1).is_none(),
            "a fourth retry with one pending"
        );
        drop(few);
        let many: Vec<_> = (0..20).map(|_| budget.acquire(100)).collect();
        assert!(many.iter().all(Option::is_some));
        assert!(budget.acquire(100).is_none(), "21 retries with 100 pending");
        drop(many);
        assert_eq!(
            budget.active.load(Ordering::Relaxed),
            0,
            "permits give back"
        );
    }
}
