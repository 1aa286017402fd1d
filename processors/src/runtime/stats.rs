//! Process-wide counters of committed batches, for `kassa bench` and logs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the batches this process committed.
#[derive(Debug, Default)]
pub struct BatchStats {
    batches: AtomicU64,
    messages: AtomicU64,
    largest: AtomicU64,
}

/// The counters of this process.
pub static BATCHES: BatchStats = BatchStats {
    batches: AtomicU64::new(0),
    messages: AtomicU64::new(0),
    largest: AtomicU64::new(0),
};

/// A reading of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSnapshot {
    /// Batches committed.
    pub batches: u64,
    /// Messages in them.
    pub messages: u64,
    /// The largest batch.
    pub largest: u64,
}

impl BatchStats {
    /// Counts one committed batch of `size` messages.
    pub fn record(&self, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.messages.fetch_add(size as u64, Ordering::Relaxed);
        self.largest.fetch_max(size as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> BatchSnapshot {
        BatchSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
        }
    }
}
