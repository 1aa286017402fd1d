//! The payments worker's writers: the intents created for payments, and the outcomes of provider
//! calls, each written together with what finished meanwhile (one statement or one transaction
//! for many), so the cost of a write is shared when many calls finish together.

use kassa_schemas::gather::{BatchWrite, Gatherer, Gathering};

use super::*;

/// How outcomes gather: the calls of one claim finish a few milliseconds apart, so what finishes
/// within 5 ms of the first joins its transaction; up to 64 in one, 4 transactions at a time.
const OUTCOMES: Gathering = Gathering {
    at_most: 64,
    writes_at_once: 4,
    wait: Duration::from_millis(5),
};

/// How intents gather: the confirm call waits on the write, so nothing waits for more; what is
/// created while two writes are under way goes into the next.
const INTENTS: Gathering = Gathering {
    at_most: 256,
    writes_at_once: 2,
    wait: Duration::ZERO,
};

/// Hands finished work and new intents to the tasks that write them.
#[derive(Clone)]
pub(super) struct Recorder {
    outcomes: Gatherer<OutcomeWriter>,
    intents: Gatherer<IntentWriter>,
}

impl Recorder {
    /// Starts the writing tasks; they end once every `Recorder` is dropped.
    pub(super) fn start(
        pool: PgPool,
        codec: Arc<Codec>,
        owner: String,
        recheck: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let outcome_writer = OutcomeWriter {
            pool: pool.clone(),
            codec,
            owner,
            recheck,
        };
        let (outcomes, writing_outcomes) =
            Gatherer::start("payment outcome", OUTCOMES, outcome_writer);
        let (intents, writing_intents) =
            Gatherer::start("payment intent", INTENTS, IntentWriter(pool));
        let both = tokio::spawn(async move {
            let _ = tokio::join!(writing_outcomes, writing_intents);
        });
        (Self { outcomes, intents }, both)
    }

    /// Writes `done` (with whatever else finished meanwhile); returns once it is committed.
    pub(super) async fn record(&self, done: Done) -> Result<(), String> {
        match self.outcomes.write(done).await {
            Ok(written) => written.map_err(|e| e.to_string()),
            Err(stopped) => Err(stopped.to_string()),
        }
    }

    /// Records `intent_id` as `order_id`'s intent unless one is recorded already (with whatever
    /// else was created meanwhile); returns the recorded one, the only intent ever confirmed.
    pub(super) async fn intent(&self, order_id: &str, intent_id: &str) -> Result<String, TaskError> {
        let new = (order_id.to_owned(), intent_id.to_owned());
        Ok(self.intents.write(new).await??)
    }
}

/// Writes outcomes of provider calls: the payments, their attempts and events, one transaction.
struct OutcomeWriter {
    pool: PgPool,
    codec: Arc<Codec>,
    owner: String,
    recheck: Duration,
}

impl BatchWrite for OutcomeWriter {
    type Item = Done;
    type Output = ();
    type Error = TaskError;

    async fn write(&self, done: &[Done]) -> Result<Vec<()>, TaskError> {
        metrics::histogram!("kassa_payment_writes_batch_size").record(done.len() as f64);
        record(&self.pool, &self.codec, done, &self.owner, self.recheck).await?;
        Ok(vec![(); done.len()])
    }
}

/// Records new intents: (order id, intent id), one statement.
struct IntentWriter(PgPool);

impl BatchWrite for IntentWriter {
    type Item = (String, String);
    type Output = String;
    type Error = sqlx::Error;

    async fn write(&self, intents: &[(String, String)]) -> Result<Vec<String>, sqlx::Error> {
        store::record_intents(&self.0, intents).await
    }
}
