//! `GET /api/orders/{id}/events`: an order's status changes as Server-Sent Events, each as it
//! commits. Event 0 is `accepted`; event *n* is the *n*-th step of the order's audit trail (the
//! same steps `GET /api/orders/{id}` lists as `transitions`), so ids only grow and a client that
//! reconnects with `Last-Event-ID` gets exactly what it missed. The stream ends after the final
//! status (`completed`, `rejected`, `cancelled`), or after [`LONGEST_STREAM`] (the client
//! reconnects and resumes); an order already decided whose every event the client has is
//! answered 204, which tells an `EventSource` not to reconnect. Wakes come from the status feed,
//! as the long poll's do.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::AppState;
use crate::accepted::owned_order;
use crate::auth::Storefront;
use crate::domain::XCustomerId;
use crate::error::ApiError;
use crate::order_status::{Snapshot, Step};
use crate::problem::{CommonErrors, Problem};
use crate::status_feed::{StatusFeed, Watch};

/// The longest one stream lasts; the client then reconnects with `Last-Event-ID`.
pub const LONGEST_STREAM: Duration = Duration::from_secs(600);
/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a client waits before reconnecting (the `retry` field of the first event).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// Statuses after which nothing changes.
const FINAL: [&str; 3] = ["completed", "rejected", "cancelled"];

/// One status change, the `data` of a `status` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StatusEvent {
    /// The order.
    pub order_id: Uuid,
    /// Its status after this change (`accepted` for event 0).
    pub status: String,
    /// Its status before (absent for event 0 and the first step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What moved it (e.g. `PaymentAuthorized`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// When the orders processor made the change (absent for event 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// Whether this status is final: the stream ends after it.
    pub last: bool,
}

/// The `status` events of `snapshot` from the one numbered `next` on (event 0: `accepted`; event
/// n: trail step n), numbered.
pub fn events_of(order_id: Uuid, snapshot: &Snapshot, next: usize) -> Vec<(usize, StatusEvent)> {
    let accepted = StatusEvent {
        order_id,
        status: "accepted".into(),
        from: None,
        trigger: None,
        at: None,
        last: false,
    };
    let mut status = accepted.status.clone();
    let steps = snapshot
        .trail
        .iter()
        .enumerate()
        .map(|(i, step): (usize, &Step)| {
            status = step
                .to
                .clone()
                .or_else(|| step.from.clone())
                .unwrap_or_else(|| status.clone());
            let event = StatusEvent {
                order_id,
                status: status.clone(),
                from: step.from.clone(),
                trigger: step
                    .trigger
                    .clone()
                    .or_else(|| Some(step.cause_type.clone())),
                at: Some(step.at),
                last: FINAL.contains(&status.as_str()),
            };
            (i + 1, event)
        });
    std::iter::once((0, accepted))
        .chain(steps)
        .filter(|(id, _)| *id >= next)
        .collect()
}

/// One client's stream: what is queued to send, and the watch that wakes it.
struct Follow {
    feed: StatusFeed,
    watch: Watch,
    order_id: Uuid,
    /// The id of the next event to send.
    next: usize,
    queued: VecDeque<Event>,
    /// The final status is queued: end once the queue is sent.
    finished: bool,
    deadline: tokio::time::Instant,
    first: bool,
}

impl Follow {
    /// Queues the events of `snapshot` not sent yet.
    fn queue(&mut self, snapshot: &Snapshot) {
        for (id, event) in events_of(self.order_id, snapshot, self.next) {
            self.next = id + 1;
            self.finished |= event.last;
            let mut sse = Event::default().id(id.to_string()).event("status");
            if std::mem::take(&mut self.first) {
                sse = sse.retry(RECONNECT_AFTER);
            }
            match sse.json_data(&event) {
                Ok(sse) => self.queued.push_back(sse),
                Err(e) => tracing::error!(error = %e, "a status event could not be written"),
            }
        }
    }

    /// The next event: queued, or after the next change; None when the stream ends.
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            let change = tokio::time::timeout_at(self.deadline, self.watch.changed())
                .await
                .ok()?;
            let order = self.order_id.to_string();
            match self.feed.read(&order, change.version).await {
                Ok(snapshot) => self.queue(&snapshot),
                // A failed read (the database restarting) waits for the next wake, as the long
                // poll does: the listener's reconnect wakes every watch to read again.
                Err(e) => tracing::debug!(error = %e, "order status re-read failed; waiting on"),
            }
        }
    }
}

/// `GET /api/orders/{id}/events`: the order's status changes as Server-Sent Events.
#[utoipa::path(get, path = "/api/orders/{id}/events", operation_id = "streamOrderEvents", tag = "orders", params(("id" = String, Path, description = "order id"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]{1,18}$", description = "the id of the last event received: the stream resumes after it")), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "`text/event-stream` of `status` events (id 0: `accepted`; id n: the n-th step of the audit trail), each `data` a StatusEvent; it ends after the final status", content_type = "text/event-stream", body = StatusEvent), (status = 204, description = "the order is decided and the client has every event (an EventSource stops reconnecting)")))]
pub async fn stream(
    State(state): State<AppState>,
    storefront: Storefront,
    customer: XCustomerId,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let next = match headers.get("last-event-id") {
        None => 0,
        Some(value) => {
            let id = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            id.and_then(|id| id.checked_add(1))
                .ok_or_else(|| Problem::invalid("Last-Event-ID", "an event id this stream sent"))?
        }
    };
    let order = owned_order(&state, &storefront, &customer, &id).await?;
    let order_id = order.order_id;
    // Watch before reading, so a change between the read and the wait is not missed.
    let mut watch = state.status_feed.watch(&order_id.to_string());
    let snapshot = state
        .status_feed
        .read(&order_id.to_string(), watch.version())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "order status unreadable");
            ApiError::from(Problem::unavailable("the database is unavailable", 1))
        })?;
    let mut follow = Follow {
        feed: state.status_feed.clone(),
        watch,
        order_id,
        next,
        queued: VecDeque::new(),
        finished: false,
        deadline: tokio::time::Instant::now() + LONGEST_STREAM,
        first: true,
    };
    follow.queue(&snapshot);
    let decided = snapshot
        .row
        .as_ref()
        .is_some_and(|r| FINAL.contains(&r.state.as_str()));
    if follow.queued.is_empty() && decided {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let events = futures::stream::unfold(follow, Follow::next_event);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(from: Option<&str>, to: &str) -> Step {
        Step {
            from: from.map(str::to_owned),
            to: Some(to.to_owned()),
            trigger: Some("T".into()),
            cause_type: "E".into(),
            at: Utc::now(),
        }
    }

    #[test]
    fn events_are_numbered_from_accepted_and_resume_after_the_last_one_seen() {
        let snapshot = Snapshot {
            row: None,
            trail: vec![
                step(None, "pending"),
                step(Some("pending"), "reserved"),
                step(Some("reserved"), "completed"),
            ],
        };
        let id = Uuid::new_v4();
        let all = events_of(id, &snapshot, 0);
        let statuses: Vec<(usize, &str, bool)> = all
            .iter()
            .map(|(n, e)| (*n, e.status.as_str(), e.last))
            .collect();
        assert_eq!(
            statuses,
            [
                (0, "accepted", false),
                (1, "pending", false),
                (2, "reserved", false),
                (3, "completed", true)
            ]
        );
        let resumed: Vec<usize> = events_of(id, &snapshot, 2)
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(resumed, [2, 3]);
        assert!(events_of(id, &snapshot, 4).is_empty());
    }
}
