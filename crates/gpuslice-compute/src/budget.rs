//! The slice's budget on one GPU: a virtual-scheduling bucket over one atomic word (the
//! theoretical arrival time, TAT) that every process of the slice shares through the
//! ledger.
//!
//! Using `b` nanoseconds of GPU time at a share of `p` percent moves the TAT forward by
//! `b × 100 / p` nanoseconds of wall time, starting no earlier than when that work
//! began (idle time earns no credit). The slice may submit work while the TAT is at most
//! a period ahead of now. All updates are single atomic read-modify-writes, so a process
//! killed at any instant leaves the word valid: what it used is charged, nothing else.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A slice's budget on one GPU.
#[derive(Debug, Clone, Copy)]
pub struct Budget<'a> {
    tat: &'a AtomicU64,
    busy_total: &'a AtomicU64,
}

impl<'a> Budget<'a> {
    /// A budget over the slice's shared words: the TAT and a running total of busy time
    /// (for status and metrics).
    pub fn new(tat: &'a AtomicU64, busy_total: &'a AtomicU64) -> Self {
        Budget { tat, busy_total }
    }

    /// Charges `busy_ns` of GPU time that began at `started_ns`, at `percent` percent.
    pub fn charge(&self, busy_ns: u64, started_ns: u64, percent: u32) {
        if busy_ns == 0 {
            return;
        }
        let percent = u64::from(percent.clamp(1, 100));
        let cost = busy_ns.saturating_mul(100) / percent;
        let _ = self.tat.fetch_update(Relaxed, Relaxed, |tat| {
            Some(tat.max(started_ns).saturating_add(cost))
        });
        self.busy_total.fetch_add(busy_ns, Relaxed);
    }

    /// How far the TAT is ahead of `now_ns` (negative: the slice has unused time).
    pub fn debt_ns(&self, now_ns: u64) -> i64 {
        let tat = self.tat.load(Relaxed);
        let debt = i128::from(tat) - i128::from(now_ns);
        i64::try_from(debt).unwrap_or(if debt < 0 { i64::MIN } else { i64::MAX })
    }

    /// Total GPU busy time charged so far.
    pub fn busy_total_ns(&self) -> u64 {
        self.busy_total.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_scale_with_the_share_and_idle_time_earns_nothing() {
        let (tat, busy) = (AtomicU64::new(0), AtomicU64::new(0));
        let b = Budget::new(&tat, &busy);
        // 3 ms of GPU time at 30% costs 10 ms of wall time.
        b.charge(3_000_000, 1_000_000_000, 30);
        assert_eq!(b.debt_ns(1_000_000_000), 10_000_000);
        // Charged again right after: the debt adds up.
        b.charge(3_000_000, 1_000_000_000, 30);
        assert_eq!(b.debt_ns(1_000_000_000), 20_000_000);
        // A second later the slice has been idle: work that starts then starts from
        // then, without credit for the idle second.
        b.charge(1_000_000, 2_000_000_000, 50);
        assert_eq!(b.debt_ns(2_000_000_000), 2_000_000);
        assert_eq!(b.busy_total_ns(), 7_000_000);
        assert!(b.debt_ns(3_000_000_000) < 0);
    }
}
