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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::order_status::Snapshot;

/// How many status requests may read the database at once (half the API's pool).
const READS_AT_ONCE: usize = 16;
/// Reads kept for requests that come for the same version of an order.
const SNAPSHOTS_KEPT: u64 = 50_000;
/// How long a read is kept (a newer version makes it unused long before).
const SNAPSHOT_TTL: Duration = Duration::from_secs(10);

/// An order's version, and when this process heard of the change that made it (None: no change
/// heard since its waiters started watching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The version: higher for every change heard.
    pub version: u64,
    /// When the change was heard.
    pub heard_at: Option<Instant>,
}

/// The waiters' orders, each with the version its waiters watch.
#[derive(Default)]
struct Waiters {
    orders: Mutex<HashMap<String, watch::Sender<Change>>>,
    /// The last version given: every change (of any order) gets the next one.
    sequence: AtomicU64,
    /// Whether the listener is connected: while it is not, changes go unheard, so every new
    /// watch gets a version of its own (a read of its own).
    listening: AtomicBool,
}

impl Waiters {
    /// Gives `order` a new version, waking its waiters (if it has any).
    fn changed(&self, order: &str) {
        let change = self.next();
        let orders = self.orders.lock().expect("waiters");
        if let Some(current) = orders.get(order) {
            current.send_replace(change);
        }
    }

    /// The next change, heard now.
    fn next(&self) -> Change {
        Change {
            version: self.next_version(),
            heard_at: Some(Instant::now()),
        }
    }

    /// The next version of the sequence.
    fn next_version(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Gives every order a new version: each waiter reads again.
    fn all_changed(&self) {
        let change = self.next();
        let orders = self.orders.lock().expect("waiters");
        for current in orders.values() {
            current.send_replace(change);
        }
    }
}

/// Wakes the requests waiting on an order when its status changes.
#[derive(Clone)]
pub struct StatusFeed {
    waiters: Arc<Waiters>,
    reads: Arc<Semaphore>,
    snapshots: moka::future::Cache<(String, u64), Arc<Snapshot>>,
    /// Where reads are asked for: gathered, and read many orders a statement.
    loads: Option<mpsc::UnboundedSender<Load>>,
}

/// One order's read, asked for: the answer goes back on the channel.
type Load = (String, oneshot::Sender<Result<Snapshot, Arc<sqlx::Error>>>);

/// Most orders one statement reads.
const ORDERS_A_READ: usize = 500;

/// One request's watch on one order, from before its first read (so no change between that read
/// and the wait is missed) until it answers.
pub struct Watch {
    waiters: Arc<Waiters>,
    order: String,
    changes: Option<watch::Receiver<Change>>,
}

impl StatusFeed {
    /// Starts listening on `pool`'s database (reconnecting when the connection drops).
    pub fn start(pool: PgPool) -> Self {
        let mut feed = Self::idle();
        tokio::spawn(listen(pool.clone(), feed.waiters.clone()));
        let (loads, asked) = mpsc::unbounded_channel();
        tokio::spawn(load(pool, asked, feed.reads.clone()));
        feed.loads = Some(loads);
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
            loads: None,
        }
    }

    /// Starts watching `order` (`kassa_order_status_watches` counts the watches open).
    pub fn watch(&self, order: &str) -> Watch {
        metrics::gauge!("kassa_order_status_watches").increment(1.0);
        let mut orders = self.waiters.orders.lock().expect("waiters");
        let changes = match orders.get(order) {
            Some(current) => current.subscribe(),
            None => {
                // Any change from now on gets a higher version than the current one; while
                // changes go unheard, the watch starts a version of its own.
                let version = if self.waiters.listening.load(Ordering::SeqCst) {
                    self.waiters.sequence.load(Ordering::SeqCst)
                } else {
                    self.waiters.next_version()
                };
                let (current, changes) = watch::channel(Change {
                    version,
                    heard_at: None,
                });
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

    /// `order`'s status and trail as of `version` (a [`Watch::version`]): read once for every
    /// request that asks for the same version, in one statement with the other orders asked for
    /// meanwhile (through a permit).
    pub async fn read(&self, order: &str, version: u64) -> Result<Arc<Snapshot>, Arc<sqlx::Error>> {
        self.snapshots
            .try_get_with((order.to_owned(), version), async {
                let (answer, answered) = oneshot::channel();
                let asked = self
                    .loads
                    .as_ref()
                    .is_some_and(|loads| loads.send((order.to_owned(), answer)).is_ok());
                if !asked {
                    return Err(sqlx::Error::PoolClosed);
                }
                match answered.await {
                    Ok(Ok(snapshot)) => Ok(Arc::new(snapshot)),
                    Ok(Err(e)) => Err(sqlx::Error::Protocol(e.to_string())),
                    Err(_) => Err(sqlx::Error::PoolClosed),
                }
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
        self.current().version
    }

    /// Waits until the order may have changed; returns the change.
    pub async fn changed(&mut self) -> Change {
        if let Some(changes) = self.changes.as_mut() {
            // The sender lives as long as any receiver: an error cannot happen while we wait.
            let _ = changes.changed().await;
        }
        self.current()
    }

    fn current(&mut self) -> Change {
        self.changes.as_mut().map_or(
            Change {
                version: 0,
                heard_at: None,
            },
            |c| *c.borrow_and_update(),
        )
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

/// Reads what is asked for: whatever has gathered (up to [`ORDERS_A_READ`] orders) in one
/// statement, each under a read permit, so many orders changed at once cost a few statements.
async fn load(pool: PgPool, mut asked: mpsc::UnboundedReceiver<Load>, reads: Arc<Semaphore>) {
    while let Some(first) = asked.recv().await {
        let permit = reads.clone().acquire_owned().await.expect("never closed");
        // Gathered while waiting for the permit, too.
        let mut batch = vec![first];
        while batch.len() < ORDERS_A_READ {
            match asked.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            let started = Instant::now();
            let read = crate::order_status::snapshots(&pool, &ids).await;
            drop(permit);
            metrics::histogram!("kassa_order_status_read_seconds")
                .record(started.elapsed().as_secs_f64());
            deliver(batch, read);
        });
    }
}

/// Sends each asker of `batch` its order's read (or the error). An order may be asked for twice
/// in a batch (two versions of it): each asker gets the read (a dropped answer would be taken
/// for a closed pool).
fn deliver(batch: Vec<Load>, read: Result<HashMap<String, Snapshot>, sqlx::Error>) {
    match read {
        Ok(found) => {
            for (id, answer) in batch {
                if let Some(snapshot) = found.get(&id) {
                    let _ = answer.send(Ok(snapshot.clone()));
                }
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for (_, answer) in batch {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

async fn listen(pool: PgPool, waiters: Arc<Waiters>) {
    let mut delay = Duration::from_millis(100);
    loop {
        // Runs until the connection is lost. (`try_recv`, not `recv`: `recv` reconnects by
        // itself, and the changes missed meanwhile would go unnoticed.)
        let listened: Result<(), sqlx::Error> = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen(kassa_schemas::read_model::ORDER_STATUS_CHANNEL)
                .await?;
            // Listening again: anything changed while it was not is read now.
            waiters.listening.store(true, Ordering::SeqCst);
            waiters.all_changed();
            delay = Duration::from_millis(100);
            while let Some(notification) = listener.try_recv().await? {
                waiters.changed(notification.payload());
            }
            Ok(())
        }
        .await;
        waiters.listening.store(false, Ordering::SeqCst);
        if pool.is_closed() {
            return; // the API was stopped (`Started::stop`)
        }
        match listened {
            Ok(()) => tracing::warn!(?delay, "order status listener lost; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "order status listener failed; reconnecting")
            }
        }
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
        let (woken, woken_too) = (a.changed().await.version, a_too.changed().await.version);
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
    async fn while_changes_go_unheard_every_new_request_reads_afresh() {
        let feed = StatusFeed::idle();
        feed.waiters.listening.store(true, Ordering::SeqCst);
        let heard = feed.watch("a").version();
        assert_eq!(
            feed.watch("a").version(),
            heard,
            "listening: one read serves both"
        );
        feed.waiters.listening.store(false, Ordering::SeqCst);
        let first = feed.watch("a").version();
        let second = feed.watch("a").version();
        assert!(
            first > heard && second > first,
            "not listening: a change may have gone unheard, so no read is shared"
        );
    }

    #[tokio::test]
    async fn an_order_asked_for_twice_in_one_read_answers_both() {
        let (first, first_answer) = oneshot::channel();
        let (second, second_answer) = oneshot::channel();
        let batch = vec![("a".to_owned(), first), ("a".to_owned(), second)];
        let snapshot = Snapshot {
            row: None,
            trail: Vec::new(),
        };
        deliver(
            batch,
            Ok(HashMap::from([("a".to_owned(), snapshot.clone())])),
        );
        assert_eq!(
            first_answer.await.expect("answered").expect("read"),
            snapshot
        );
        assert_eq!(
            second_answer.await.expect("answered").expect("read"),
            snapshot
        );
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
