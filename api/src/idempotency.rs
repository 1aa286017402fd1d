//! Idempotency-Key records (per storefront, kept 24 hours): the same key and body get the same answer,
//! also when the requests race; the same key with another body is refused.

use kassa_schemas::gather::{BatchWrite, Gatherer, Gathering};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;

/// A stored Idempotency-Key: request hash, order id, and the answer once given.
type StoredKey = (Vec<u8>, Uuid, Option<i32>, Option<serde_json::Value>);

/// What an existing record says about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Existing {
    /// No record: this request is the first with its key (claimed with its order, in
    /// `accepted::claim_and_store`).
    None,
    /// The key was used with another request.
    Reused,
    /// The same request was answered: replay the answer.
    Answered {
        /// The order id.
        order_id: Uuid,
        /// HTTP status answered.
        status: u16,
        /// JSON body answered.
        body: serde_json::Value,
    },
    /// The same request was accepted but not (yet) answered: it raced this one, or failed before
    /// Kafka acknowledged. Finish it with the same order id.
    Pending {
        /// The order id.
        order_id: Uuid,
    },
}

/// The fingerprint of a request: its storefront, route and canonical body.
pub fn fingerprint(storefront: &str, route: &str, canonical_body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in [
        storefront.as_bytes(),
        b"\0",
        route.as_bytes(),
        b"\0",
        canonical_body,
    ] {
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

/// Looks up the record for (storefront, key).
pub async fn existing(
    pool: &PgPool,
    storefront: &str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Existing, sqlx::Error> {
    let row: Option<StoredKey> = sqlx::query_as(
        "SELECT request_hash, order_id, response_status, response_body FROM api.idempotency_keys
         WHERE storefront = $1 AND key = $2 AND created_at > now() - interval '24 hours'",
    )
    .bind(storefront)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Existing::None,
        Some((hash, _, _, _)) if hash != fingerprint => Existing::Reused,
        Some((_, order_id, Some(status), Some(body))) => Existing::Answered {
            order_id,
            status: status as u16,
            body,
        },
        Some((_, order_id, _, _)) => Existing::Pending { order_id },
    })
}

/// What the record of (storefront, key) on `route` holds: its order and, once stored, its answer
/// (HTTP status, JSON body). None: the key was not used on `route`.
pub async fn on_route(
    pool: &PgPool,
    storefront: &str,
    key: &str,
    route: &str,
) -> Result<Option<(Uuid, Option<(u16, serde_json::Value)>)>, sqlx::Error> {
    let row: Option<(Uuid, Option<i32>, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT order_id, response_status, response_body FROM api.idempotency_keys
         WHERE storefront = $1 AND key = $2 AND route = $3
           AND created_at > now() - interval '24 hours'",
    )
    .bind(storefront)
    .bind(key)
    .bind(route)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(order_id, status, body)| {
        let answer = status.zip(body).map(|(status, body)| (status as u16, body));
        (order_id, answer)
    }))
}

/// An answer to store for replays: (storefront, key, HTTP status, JSON body).
type Answer = (String, String, u16, serde_json::Value);

/// How answers gather: a request waits on its answer's write, so nothing waits for more; what
/// is answered while two writes are under way goes into the next, one statement for all.
const ANSWERS: Gathering = Gathering {
    at_most: 256,
    writes_at_once: 2,
    wait: std::time::Duration::ZERO,
};

/// Stores the answers to replay, those of requests that finish together in one statement.
#[derive(Clone)]
pub struct Answers(Gatherer<AnswerWriter>);

impl Answers {
    /// Starts the task that writes answers to `pool`; it ends once every clone is dropped.
    pub fn start(pool: PgPool) -> Self {
        Self(Gatherer::start("Idempotency-Key answer", ANSWERS, AnswerWriter(pool)).0)
    }

    /// Stores the answer to replay for (storefront, key); returns once it is stored.
    pub async fn store(
        &self,
        storefront: &str,
        key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<(), ApiError> {
        let answer = (storefront.to_owned(), key.to_owned(), status, body.clone());
        Ok(self.0.write(answer).await??)
    }

    /// Hands in the answer to replay for (storefront, key) without waiting for its write. Safe
    /// for an order already published: until the answer is stored, a retry finds the order
    /// pending and publishes it again (the same event ids) before answering, and the sweep of
    /// unanswered orders does the same for one whose answer never got written.
    pub fn store_behind(&self, storefront: &str, key: &str, status: u16, body: &serde_json::Value) {
        let answer = (storefront.to_owned(), key.to_owned(), status, body.clone());
        if let Err(e) = self.0.hand_in(answer) {
            tracing::warn!(error = %e, "an Idempotency-Key answer was not stored; the sweep of unanswered orders will");
        }
    }
}

/// Writes answers to the `api` schema.
struct AnswerWriter(PgPool);

impl BatchWrite for AnswerWriter {
    type Item = Answer;
    type Output = ();
    type Error = sqlx::Error;

    async fn write(&self, answers: &[Answer]) -> Result<Vec<()>, sqlx::Error> {
        let storefronts: Vec<&str> = answers.iter().map(|a| a.0.as_str()).collect();
        let keys: Vec<&str> = answers.iter().map(|a| a.1.as_str()).collect();
        let statuses: Vec<i32> = answers.iter().map(|a| i32::from(a.2)).collect();
        let bodies: Vec<&serde_json::Value> = answers.iter().map(|a| &a.3).collect();
        sqlx::query(
            "UPDATE api.idempotency_keys k SET response_status = x.status, response_body = x.body
             FROM unnest($1::text[], $2::text[], $3::int[], $4::jsonb[]) AS x(storefront, key, status, body)
             WHERE k.storefront = x.storefront AND k.key = x.key",
        )
        .bind(&storefronts)
        .bind(&keys)
        .bind(&statuses)
        .bind(&bodies)
        .execute(&self.0)
        .await
        .inspect_err(|e| {
            // Nobody may be waiting for this write (`Answers::store_behind`): say it here.
            tracing::warn!(error = %e, answers = answers.len(), "could not store Idempotency-Key answers; the sweep of unanswered orders will")
        })?;
        Ok(vec![(); answers.len()])
    }
}

/// Deletes records older than 24 h; returns how many.
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM api.idempotency_keys WHERE created_at < now() - interval '24 hours'",
    )
    .execute(pool)
    .await?
    .rows_affected())
}
