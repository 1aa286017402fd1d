//! Wakes the requests long-polling an order (`GET /api/orders/{id}?wait=`) when, and only when,
//! that order's status changes. The orders processor notifies `kassa_order_status` with each id
//! it changed; one listener per API process bumps that order's counter, which only its waiters
//! watch. When the listener's connection drops, changes may have been missed, so every waiter is
//! woken to read again. Every read of the status route (the first, the re-reads, the answer's)
//! goes through a small number of permits: thousands of requests arriving or re-reading at once
//! queue here, never for the database pool, whose wait ends in 503.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How many status requests may read the database at once (half the API's pool).
const READS_AT_ONCE: usize = 16;

/// The waiters' orders, each with the counter its waiters watch.
#[derive(Default)]
struct Waiters {
    orders: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Waiters {
    /// Bumps `order`'s counter, waking its waiters (if it has any).
    fn changed(&self, order: &str) {
        let orders = self.orders.lock().expect("waiters");
        if let Some(counter) = orders.get(order) {
            counter.send_modify(|n| *n += 1);
        }
    }

    /// Bumps every counter: each waiter reads again.
    fn all_changed(&self) {
        let orders = self.orders.lock().expect("waiters");
        for counter in orders.values() {
            counter.send_modify(|n| *n += 1);
        }
    }
}

/// Wakes the requests waiting on an order when its status changes.
#[derive(Clone)]
pub struct StatusFeed {
    waiters: Arc<Waiters>,
    reads: Arc<Semaphore>,
}

/// One request's watch on one order, from before its first read (so no change between that read
/// and the wait is missed) until it answers.
pub struct Watch {
    waiters: Arc<Waiters>,
    order: String,
    changes: Option<watch::Receiver<u64>>,
    reads: Arc<Semaphore>,
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
        }
    }

    /// Starts watching `order` (`kassa_order_status_watches` counts the watches open).
    pub fn watch(&self, order: &str) -> Watch {
        metrics::gauge!("kassa_order_status_watches").increment(1.0);
        let mut orders = self.waiters.orders.lock().expect("waiters");
        let changes = match orders.get(order) {
            Some(counter) => counter.subscribe(),
            None => {
                let (counter, changes) = watch::channel(0);
                orders.insert(order.to_owned(), counter);
                changes
            }
        };
        Watch {
            waiters: self.waiters.clone(),
            order: order.to_owned(),
            changes: Some(changes),
            reads: self.reads.clone(),
        }
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
    /// Waits until the order may have changed, then returns a permit to read it (held while
    /// reading, so woken waiters read a few at a time).
    pub async fn changed(&mut self) -> OwnedSemaphorePermit {
        if let Some(changes) = self.changes.as_mut() {
            // The sender lives as long as any receiver: an error cannot happen while we wait.
            let _ = changes.changed().await;
        }
        self.reads
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
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
    async fn woken_waiters_read_a_few_at_a_time() {
        let feed = StatusFeed::idle();
        let mut watches: Vec<Watch> = (0..20).map(|i| feed.watch(&i.to_string())).collect();
        feed.waiters.all_changed();
        let mut permits = Vec::new();
        for watch in &mut watches[..READS_AT_ONCE] {
            permits.push(watch.changed().await);
        }
        let next =
            tokio::time::timeout(Duration::from_millis(100), watches[READS_AT_ONCE].changed());
        assert!(next.await.is_err(), "the next waits for a permit");
        drop(permits);
    }
}
