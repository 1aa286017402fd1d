//! `expiry.events`: deadlines that passed, keyed by order id (expiry → orders).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::payload_union;
use crate::topics::Topic;

/// What a deadline guards (Avro enum `DeadlineKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineKind {
    /// The reservation hold.
    Hold,
    /// Completing a payment action (3-D Secure).
    PaymentAction,
    /// Progress of an order waiting on another processor (stock commit, capture): recurs until
    /// the order moves on, each time asking again.
    Progress,
}

/// A tracked deadline is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlinePassed {
    /// The order.
    pub order_id: String,
    /// Which deadline.
    pub kind: DeadlineKind,
    /// When it was due.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub due_at: DateTime<Utc>,
    /// When expiry fired it.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub fired_at: DateTime<Utc>,
}

payload_union! {
    /// Everything on `expiry.events`.
    ExpiryEvent for Topic::ExpiryEvents => { DeadlinePassed }
}
