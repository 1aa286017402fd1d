//! Wakes the requests long-polling an order (`GET /api/orders/{id}?wait=`) when, and only when,
//! that order's status changes, and reads each change once for all of them. The orders
//! processor notifies `kassa_order_status` with each id it changed; one listener per API process
//! gives each notification the next number of a sequence and sets that order's version to it,
//! which only its waiters watch. When the listener's connection drops, changes may have been
//! missed, so every order gets a new version and every waiter reads again. A read is keyed by
//! (order, version): the requests woken by one change (and new requests before the next) share
//! one read of the status and trail. Reads go through a small number of permits: thousands of
//! requests arriving or waking at once queue here, never for the database pool, whose wait ends
//! in 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::order_status::Snapshot;

/// How many status requests may read the database at once (half the API's pool).
const READS_AT_ONCE: usize = 16;
/// Reads kept for requests that come for the same version of an order.
const SNAPSHOTS_KEPT: u64 = 50_000;
/// How long a read is kept (a newer version makes it unused long before).
const SNAPSHOT_TTL: Duration = Duration::from_secs(10);

/// The waiters' orders, each with the version its waiters watch.
#[derive(Default)]
struct Waiters {
    orders: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// The last version given: every change (of any order) gets the next one.
    sequence: AtomicU64,
}

impl Waiters {
    /// Gives `order` a new version, waking its waiters (if it has any).
    fn changed(&self, order: &str) {
        let version = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        let orders = self.orders.lock().expect("waiters");
        if let Some(current) = orders.get(order) {
            current.send_replace(version);
        }
    }

    /// Gives every order a new version: each waiter reads again.
    fn all_changed(&self) {
        let version = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        let orders = self.orders.lock().expect("waiters");
        for current in orders.values() {
            current.send_replace(version);
        }
    }
}

/// Wakes the requests waiting on an order when its status changes.
#[derive(Clone)]
pub struct StatusFeed {
    waiters: Arc<Waiters>,
    reads: Arc<Semaphore>,
    snapshots: moka::future::Cache<(String, u64), Arc<Snapshot>>,
}

/// One request's watch on one order, from before its first read (so no change between that read
/// and the wait is missed) until it answers.
pub struct Watch {
    waiters: Arc<Waiters>,
    order: String,
    changes: Option<watch::Receiver<u64>>,
}

impl StatusFeed {
    /// Starts listening on `pool`'s database (reconnecting when the connection drops).
    pub fn start(pool: PgPool) -> Self {
        let feed = Self::idle();
        tokio::spawn(listen(pool, feed.waiters.clone()));
        feed
    }

    /// A feed that nothing wakes yet (`start` adds the listener).
    fn idle() -> Self {
        Self {
            waiters: Arc::default(),
            reads: Arc::new(Semaphore::new(READS_AT_ONCE)),
            snapshots: moka::future::Cache::builder()
                .max_capacity(SNAPSHOTS_KEPT)
                .time_to_live(SNAPSHOT_TTL)
                .build(),
        }
    }

    /// Starts watching `order` (`kassa_order_status_watches` counts the watches open).
    pub fn watch(&self, order: &str) -> Watch {
        metrics::gauge!("kassa_order_status_watches").increment(1.0);
        let mut orders = self.waiters.orders.lock().expect("waiters");
        let changes = match orders.get(order) {
            Some(current) => current.subscribe(),
            None => {
                // Any change from now on gets a higher version than the current one.
                let version = self.waiters.sequence.load(Ordering::SeqCst);
                let (current, changes) = watch::channel(version);
                orders.insert(order.to_owned(), current);
                changes
            }
        };
        Watch {
            waiters: self.waiters.clone(),
            order: order.to_owned(),
            changes: Some(changes),
        }
    }

    /// `order`'s status and trail as of `version` (a [`Watch::version`]): read once (through a
    /// permit) for every request that asks for the same version.
    pub async fn read(
        &self,
        pool: &PgPool,
        order: &str,
        version: u64,
    ) -> Result<Arc<Snapshot>, Arc<sqlx::Error>> {
        self.snapshots
            .try_get_with((order.to_owned(), version), async {
                let _reading = self.reading().await;
                crate::order_status::snapshot(pool, order)
                    .await
                    .map(Arc::new)
            })
            .await
    }

    /// A permit to read an order's status: held while reading, so reads queue here.
    pub async fn reading(&self) -> OwnedSemaphorePermit {
        self.reads
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }

    /// How many orders have waiters now.
    pub fn watched(&self) -> usize {
        self.waiters.orders.lock().expect("waiters").len()
    }
}

impl Watch {
    /// The order's version now (what to read it as); later changes wake [`Watch::changed`].
    pub fn version(&mut self) -> u64 {
        self.changes.as_mut().map_or(0, |c| *c.borrow_and_update())
    }

    /// Waits until the order may have changed; returns its new version.
    pub async fn changed(&mut self) -> u64 {
        if let Some(changes) = self.changes.as_mut() {
            // The sender lives as long as any receiver: an error cannot happen while we wait.
            let _ = changes.changed().await;
        }
        self.version()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        metrics::gauge!("kassa_order_status_watches").decrement(1.0);
        let mut orders = self.waiters.orders.lock().expect("waiters");
        drop(self.changes.take());
        if orders
            .get(&self.order)
            .is_some_and(|counter| counter.receiver_count() == 0)
        {
            orders.remove(&self.order);
        }
    }
}

async fn listen(pool: PgPool, waiters: Arc<Waiters>) {
    let mut delay = Duration::from_millis(100);
    loop {
        // Runs until the connection fails: only an error ends it.
        let listened: Result<std::convert::Infallible, sqlx::Error> = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen(kassa_schemas::read_model::ORDER_STATUS_CHANNEL)
                .await?;
            // Listening again: anything changed while it was not is read now.
            waiters.all_changed();
            delay = Duration::from_millis(100);
            loop {
                let notification = listener.recv().await?;
                waiters.changed(notification.payload());
            }
        }
        .await;
        let Err(e) = listened;
        tracing::warn!(error = %e, ?delay, "order status listener lost; reconnecting");
        // Requests waiting now would miss changes: they read again (a few at a time).
        waiters.all_changed();
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_only_that_orders_waiters_and_none_is_missed() {
        let feed = StatusFeed::idle();
        let mut a = feed.watch("a");
        let mut a_too = feed.watch("a");
        let mut b = feed.watch("b");
        assert_eq!(feed.watched(), 2);
        // A change before anyone waits is not lost: the watch began before it.
        feed.waiters.changed("a");
        let soon = Duration::from_millis(200);
        assert!(tokio::time::timeout(soon, a.changed()).await.is_ok());
        assert!(tokio::time::timeout(soon, a_too.changed()).await.is_ok());
        assert!(
            tokio::time::timeout(soon, b.changed()).await.is_err(),
            "b's waiter sleeps through a's change"
        );
        feed.waiters.changed("nobody-waits");
        assert_eq!(feed.watched(), 2);
        feed.waiters.all_changed();
        assert!(tokio::time::timeout(soon, b.changed()).await.is_ok());
        drop((a, a_too, b));
        assert_eq!(feed.watched(), 0, "a finished watch leaves nothing behind");
    }

    #[tokio::test]
    async fn waiters_woken_by_one_change_read_the_same_version_and_later_ones_a_newer() {
        let feed = StatusFeed::idle();
        let (mut a, mut a_too) = (feed.watch("a"), feed.watch("a"));
        let first = a.version();
        assert_eq!(a_too.version(), first, "one read serves both");
        feed.waiters.changed("a");
        let (woken, woken_too) = (a.changed().await, a_too.changed().await);
        assert!(woken > first);
        assert_eq!(woken, woken_too, "both woken by the change read it once");
        drop((a, a_too));
        // No watch of `a` is left; it changes, then a new request comes: it must not be served
        // the read made before that change.
        feed.waiters.changed("a");
        let mut late = feed.watch("a");
        assert!(late.version() > woken);
    }

    #[tokio::test]
    async fn reads_go_a_few_at_a_time() {
        let feed = StatusFeed::idle();
        let mut permits = Vec::new();
        for _ in 0..READS_AT_ONCE {
            permits.push(feed.reading().await);
        }
        let next = tokio::time::timeout(Duration::from_millis(100), feed.reading());
        assert!(next.await.is_err(), "the next waits for a permit");
        drop(permits);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), feed.reading())
                .await
                .is_ok()
        );
    }
}
