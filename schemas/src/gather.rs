//! Writes gathered from many concurrent callers: what callers hand in while a write is under way
//! goes into the next one, so one statement and one commit serve many of them (a request's
//! answer, a payment's intent, a provider call's outcome), each caller still told how its own
//! item fared.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// How a [`Gatherer`] gathers.
#[derive(Debug, Clone, Copy)]
pub struct Gathering {
    /// Most items written together.
    pub at_most: usize,
    /// Writes under way at once: one would queue every item behind a write that waits for a lock
    /// or the CPU.
    pub writes_at_once: usize,
    /// How long a write waits for more items after its first (zero: it takes what is queued, and
    /// items gather only while every write is busy).
    pub wait: Duration,
}

/// A write of many items in one go (one statement, or one transaction).
pub trait BatchWrite: Send + Sync + 'static {
    /// What is written.
    type Item: Send + Sync + 'static;
    /// What the write of an item gives its caller.
    type Output: Send + 'static;
    /// Why a write failed.
    type Error: Send + 'static;

    /// Writes `items` in one go; returns one output per item, in their order.
    fn write(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>, Self::Error>> + Send;
}

/// The writing task of a [`Gatherer`] has ended (it is shutting down): the item was not written.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the {0} writer stopped")]
pub struct Stopped(pub &'static str);

/// What a caller of `W` is answered.
type Answer<W> = Result<<W as BatchWrite>::Output, <W as BatchWrite>::Error>;

/// An item and where its answer goes.
type Asked<W> = (<W as BatchWrite>::Item, oneshot::Sender<Answer<W>>);

/// Hands items to a task that writes them together with `W`; each caller gets its own item's
/// answer. If a write of many fails, each of its items is written alone, so one bad item holds
/// no other back and each gets its own error.
pub struct Gatherer<W: BatchWrite> {
    asks: mpsc::UnboundedSender<Asked<W>>,
    name: &'static str,
}

impl<W: BatchWrite> Clone for Gatherer<W> {
    fn clone(&self) -> Self {
        Self {
            asks: self.asks.clone(),
            name: self.name,
        }
    }
}

impl<W: BatchWrite> Gatherer<W> {
    /// Starts the writing task, named `name` in errors. It ends once every clone is dropped and
    /// its writes are done.
    pub fn start(name: &'static str, how: Gathering, writer: W) -> (Self, JoinHandle<()>) {
        let (asks, asked) = mpsc::unbounded_channel();
        let task = tokio::spawn(gathering(how, Arc::new(writer), asked));
        (Self { asks, name }, task)
    }

    /// Writes `item` together with whatever else is handed in meanwhile; returns its answer once
    /// the write is done.
    pub async fn write(&self, item: W::Item) -> Result<Answer<W>, Stopped> {
        let (answer, answered) = oneshot::channel();
        self.asks
            .send((item, answer))
            .map_err(|_| Stopped(self.name))?;
        answered.await.map_err(|_| Stopped(self.name))
    }

    /// Hands `item` in to be written with whatever else comes meanwhile, without waiting for the
    /// write: its outcome is the writer's to report.
    pub fn hand_in(&self, item: W::Item) -> Result<(), Stopped> {
        let (answer, _) = oneshot::channel();
        self.asks
            .send((item, answer))
            .map_err(|_| Stopped(self.name))
    }
}

/// The writing task: takes what has gathered (up to `at_most`) and writes it, up to
/// `writes_at_once` writes at a time, until every sender is gone.
async fn gathering<W: BatchWrite>(
    how: Gathering,
    writer: Arc<W>,
    mut asked: mpsc::UnboundedReceiver<Asked<W>>,
) {
    let at_most = how.at_most.max(1);
    let writes = Arc::new(Semaphore::new(how.writes_at_once.max(1)));
    let mut writing = JoinSet::new();
    loop {
        // The permit first: what is handed in while every write is busy goes into the next one.
        let permit = writes.clone().acquire_owned().await.expect("never closed");
        let mut batch = Vec::with_capacity(at_most);
        if asked.recv_many(&mut batch, at_most).await == 0 {
            break; // every sender dropped
        }
        if !how.wait.is_zero() {
            let until = tokio::time::Instant::now() + how.wait;
            while batch.len() < at_most {
                let room = at_most - batch.len();
                match tokio::time::timeout_at(until, asked.recv_many(&mut batch, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        let (items, answers): (Vec<W::Item>, Vec<oneshot::Sender<Answer<W>>>) =
            batch.into_iter().unzip();
        let writer = writer.clone();
        writing.spawn(async move {
            let results = together_or_alone(writer.as_ref(), &items).await;
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
            drop(permit);
        });
        while writing.try_join_next().is_some() {}
    }
    while writing.join_next().await.is_some() {}
}

/// Writes `items` in one go; if that fails, each alone.
async fn together_or_alone<W: BatchWrite>(writer: &W, items: &[W::Item]) -> Vec<Answer<W>> {
    match writer.write(items).await {
        Ok(outputs) => outputs.into_iter().map(Ok).collect(),
        Err(e) if items.len() == 1 => vec![Err(e)],
        Err(_) => {
            let mut answers = Vec::with_capacity(items.len());
            for item in items {
                let alone = writer.write(std::slice::from_ref(item)).await;
                answers.push(alone.map(|mut one| one.pop().expect("one output per item")));
            }
            answers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the batches it was given; a batch holding a negative number fails.
    #[derive(Default)]
    struct Recording {
        batches: Arc<Mutex<Vec<Vec<i32>>>>,
        hold: Arc<tokio::sync::Notify>,
    }

    impl BatchWrite for Recording {
        type Item = i32;
        type Output = i32;
        type Error = String;

        async fn write(&self, items: &[i32]) -> Result<Vec<i32>, String> {
            self.batches.lock().unwrap().push(items.to_vec());
            if items == [0] {
                // The first write waits until the test lets it go: the rest gather meanwhile.
                self.hold.notified().await;
            }
            match items.iter().find(|i| **i < 0) {
                Some(bad) => Err(format!("{bad} is negative")),
                None => Ok(items.iter().map(|i| i * 10).collect()),
            }
        }
    }

    #[tokio::test]
    async fn items_handed_in_during_a_write_go_together_and_a_bad_one_fails_alone() {
        let writer = Recording::default();
        let (batches, hold) = (writer.batches.clone(), writer.hold.clone());
        let how = Gathering {
            at_most: 100,
            writes_at_once: 1,
            wait: Duration::ZERO,
        };
        let (gatherer, task) = Gatherer::start("test", how, writer);
        let first = tokio::spawn({
            let g = gatherer.clone();
            async move { g.write(0).await }
        });
        // Until the first write has begun, nothing else is handed in.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while batches.lock().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first write never began"
            );
            tokio::task::yield_now().await;
        }
        // Each of the four is handed in (polled once: it is queued, then waits for its answer).
        let mut rest: Vec<_> = [1, 2, -3, 4]
            .into_iter()
            .map(|i| {
                let g = gatherer.clone();
                Box::pin(async move { g.write(i).await })
            })
            .collect();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for write in &mut rest {
            assert!(write.as_mut().poll(&mut cx).is_pending());
        }
        hold.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), Ok(0));
        let mut answers = Vec::new();
        for write in rest {
            answers.push(write.await.unwrap());
        }
        assert_eq!(
            answers,
            vec![Ok(10), Ok(20), Err("-3 is negative".to_owned()), Ok(40)]
        );
        // One write for the first, one for the four together (failed), then each alone.
        let batches = batches.lock().unwrap().clone();
        assert_eq!(
            batches,
            vec![
                vec![0],
                vec![1, 2, -3, 4],
                vec![1],
                vec![2],
                vec![-3],
                vec![4]
            ]
        );
        drop(gatherer);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends once every gatherer is dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn items_handed_in_without_waiting_are_written_before_the_writer_ends() {
        let writer = Recording::default();
        let batches = writer.batches.clone();
        let how = Gathering {
            at_most: 2,
            writes_at_once: 1,
            wait: Duration::ZERO,
        };
        let (gatherer, task) = Gatherer::start("test", how, writer);
        for i in 1..=5 {
            gatherer.hand_in(i).expect("the writer runs");
        }
        drop(gatherer);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends once every gatherer is dropped")
            .unwrap();
        let written: Vec<i32> = batches.lock().unwrap().concat();
        assert_eq!(written, vec![1, 2, 3, 4, 5]);
    }
}
