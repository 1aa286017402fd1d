//! Process-wide counters of committed batches, for `kassa bench` and logs; the database pools'
//! saturation, for the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Reports `pool`'s saturation every 10 s until the process ends:
/// `kassa_db_pool_connections{pool,state}` (`in_use`, `idle`) and `kassa_db_pool_max{pool}`.
pub fn watch_pool(pool: sqlx::PgPool, name: &'static str) {
    let max = f64::from(pool.options().get_max_connections());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            every.tick().await;
            let (size, idle) = (pool.size(), pool.num_idle() as u32);
            metrics::gauge!("kassa_db_pool_connections", "pool" => name, "state" => "in_use")
                .set(f64::from(size.saturating_sub(idle)));
            metrics::gauge!("kassa_db_pool_connections", "pool" => name, "state" => "idle")
                .set(f64::from(idle));
            metrics::gauge!("kassa_db_pool_max", "pool" => name).set(max);
        }
    });
}

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
