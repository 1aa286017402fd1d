//! The payments worker's writer: outcomes of provider calls that finished meanwhile are written
//! together, in one transaction a batch, a few transactions at a time.

use super::*;

/// Most outcomes written in one transaction.
const RECORDS_AT_ONCE: usize = 64;

/// What a piece of finished work is answered: written, or why not.
type Recorded = oneshot::Sender<Result<(), String>>;

/// Hands finished work to the task that writes it: whatever finished meanwhile is written in one
/// transaction, so the cost of a write is shared when many calls finish together.
#[derive(Clone)]
pub(super) struct Recorder(mpsc::UnboundedSender<(Done, Recorded)>);

impl Recorder {
    /// Starts the writing task; it ends once every `Recorder` is dropped.
    pub(super) fn start(
        pool: PgPool,
        codec: Arc<Codec>,
        owner: String,
        recheck: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (asks, asked) = mpsc::unbounded_channel();
        let task = tokio::spawn(recording(pool, codec, owner, recheck, asked));
        (Self(asks), task)
    }

    /// Writes `done` (with whatever else finished meanwhile); returns once it is committed.
    pub(super) async fn record(&self, done: Done) -> Result<(), String> {
        let (answer, answered) = oneshot::channel();
        let stopped = || "the payment writer stopped".to_owned();
        self.0.send((done, answer)).map_err(|_| stopped())?;
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// How long a write waits for more outcomes after its first.
const GATHER: Duration = Duration::from_millis(5);

/// Transactions the writer has open at once: one would queue every outcome behind a write that
/// waits for a lock or the CPU.
const WRITES_AT_ONCE: usize = 4;

/// The writing task: takes what has gathered (up to [`RECORDS_AT_ONCE`]) and writes it in one
/// transaction, up to [`WRITES_AT_ONCE`] transactions at a time.
async fn recording(
    pool: PgPool,
    codec: Arc<Codec>,
    owner: String,
    recheck: Duration,
    mut asked: mpsc::UnboundedReceiver<(Done, Recorded)>,
) {
    let writes = Arc::new(tokio::sync::Semaphore::new(WRITES_AT_ONCE));
    let mut writing = tokio::task::JoinSet::new();
    loop {
        // The permit first: what gathers while every write is busy goes into the next batch.
        let permit = writes.clone().acquire_owned().await.expect("never closed");
        let mut batch = Vec::with_capacity(RECORDS_AT_ONCE);
        if asked.recv_many(&mut batch, RECORDS_AT_ONCE).await == 0 {
            break; // every Recorder dropped
        }
        // The calls of one claim finish a few milliseconds apart: what finishes within
        // [`GATHER`] of the first joins its transaction.
        let gathered = tokio::time::Instant::now() + GATHER;
        while batch.len() < RECORDS_AT_ONCE {
            let room = RECORDS_AT_ONCE - batch.len();
            match tokio::time::timeout_at(gathered, asked.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let (done, answers): (Vec<Done>, Vec<Recorded>) = batch.into_iter().unzip();
        metrics::histogram!("kassa_payment_writes_batch_size").record(done.len() as f64);
        let (pool, codec, owner) = (pool.clone(), codec.clone(), owner.clone());
        writing.spawn(async move {
            write_batch(&pool, &codec, &owner, recheck, done, answers).await;
            drop(permit);
        });
        while writing.try_join_next().is_some() {}
    }
    while writing.join_next().await.is_some() {}
}

/// Writes `done` in one transaction and answers each; if that fails, each on its own, so one bad
/// write holds no other back.
async fn write_batch(
    pool: &PgPool,
    codec: &Codec,
    owner: &str,
    recheck: Duration,
    done: Vec<Done>,
    answers: Vec<Recorded>,
) {
    match record(pool, codec, &done, owner, recheck).await {
        Ok(()) => {
            for answer in answers {
                let _ = answer.send(Ok(()));
            }
        }
        Err(e) if done.len() == 1 => {
            for answer in answers {
                let _ = answer.send(Err(e.to_string()));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, outcomes = done.len(), "writing payment outcomes together failed; one at a time");
            for (one, answer) in done.iter().zip(answers) {
                let alone = record(pool, codec, std::slice::from_ref(one), owner, recheck).await;
                let _ = answer.send(alone.map_err(|e| e.to_string()));
            }
        }
    }
}
