//! Where this instance stands on each partition it owns, and the checks that keep it honest:
//!
//! - a partition is read from the offset stored in Postgres: when first seen after an assignment
//!   (or after a fence) the consumer is sought there, and a batch only ever starts at the stored
//!   offset this instance expects (contiguity); a batch that starts elsewhere is sought back;
//! - when the stored offset turns out to have moved forward under this instance (a fence, or a
//!   partition taken up again), the records it passed over are looked up in the processed
//!   ranges: a stretch nobody processed is a skip, reported as intended when an operator recorded
//!   the move, and as an error (logged with its range, counted, recorded) when nobody did.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset};
use sqlx::{PgConnection, PgPool};

use super::store::{self, TopicPartition};

/// How far a partition's consumer position is known to match the stored offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Not checked since the cursor was loaded.
    Unchecked,
    /// Sought to the stored offset; the next message delivered is the first at or after it.
    Sought,
    /// Delivering from the stored offset on.
    Synced,
}

/// One owned partition.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The next offset stored in Postgres, as this instance expects it (None: nothing stored).
    stored: Option<i64>,
    sync: Sync,
}

/// The cursors of the partitions this instance owns, and what it expected of the ones it let go.
#[derive(Default)]
pub(super) struct Positions {
    cursors: HashMap<TopicPartition, Cursor>,
    /// The stored offset this instance expected when it stopped tracking a partition (fenced or
    /// revoked): compared with what it finds when it takes the partition up again.
    let_go: HashMap<TopicPartition, i64>,
}

impl Positions {
    /// The stored offset expected for every tracked partition (the fence of the next batch).
    pub fn expected(&self) -> HashMap<TopicPartition, Option<i64>> {
        self.cursors
            .iter()
            .map(|(tp, c)| (tp.clone(), c.stored))
            .collect()
    }

    /// A batch committed: the partition's stored offset is now `next`.
    pub fn committed(&mut self, tp: &TopicPartition, next: i64) {
        if let Some(cursor) = self.cursors.get_mut(tp) {
            cursor.stored = Some(next);
        }
    }

    /// Whether the partition has a cursor (its stored offset is loaded and it is being synced).
    pub fn tracks(&self, message: &impl Message) -> bool {
        self.cursors.keys().any(|tp| store::is_from(tp, message))
    }

    /// Stops tracking a partition (revoked, or fenced: someone else moved its stored offset).
    pub fn let_go(&mut self, tp: &TopicPartition) {
        if let Some(Cursor {
            stored: Some(stored),
            ..
        }) = self.cursors.remove(tp)
        {
            self.let_go.insert(tp.clone(), stored);
        }
    }

    /// Makes sure every partition in `messages` is read from its stored offset: loads unknown
    /// cursors (auditing a stored offset that moved forward meanwhile), seeks a partition first
    /// seen since its assignment unless its messages start right at the stored offset, and one
    /// whose messages do not start where the stored offset stands (dropping them: they come again
    /// from the right place), and drops anything below the stored offset (already processed).
    /// Dropped records are counted in `kassa_consumer_records_dropped_total`.
    pub async fn sync<C: ConsumerContext>(
        &mut self,
        pool: &PgPool,
        schema: &str,
        consumer: &StreamConsumer<C>,
        messages: &mut Vec<OwnedMessage>,
    ) -> Result<(), sqlx::Error> {
        // Each partition's lowest offset in the batch (a few partitions, thousands of messages).
        let mut lowest: Vec<(TopicPartition, i64)> = Vec::new();
        for m in messages.iter() {
            match lowest.iter_mut().find(|(tp, _)| store::is_from(tp, m)) {
                Some((_, low)) => *low = (*low).min(m.offset()),
                None => lowest.push(((m.topic().to_owned(), m.partition()), m.offset())),
            }
        }
        let unknown: Vec<TopicPartition> = lowest
            .iter()
            .map(|(tp, _)| tp)
            .filter(|tp| !self.cursors.contains_key(*tp))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            let mut conn = pool.acquire().await?;
            let stored = store::load_offsets(&mut conn, schema, &unknown).await?;
            for tp in unknown {
                let now = stored.get(&tp).copied();
                // What this instance expected stays known until the audit is done: a failed
                // audit is tried again with the next sync, never dropped.
                if let (Some(&before), Some(now)) = (self.let_go.get(&tp), now) {
                    audit_move(&mut conn, schema, &tp, before, now).await?;
                }
                self.let_go.remove(&tp);
                self.cursors.insert(
                    tp,
                    Cursor {
                        stored: now,
                        sync: Sync::Unchecked,
                    },
                );
            }
        }

        // Each partition's first message not yet processed (None: all of them were), the lowest
        // offset when the batch starts at or after the stored one: almost always.
        let mut first: Vec<(TopicPartition, Option<i64>)> = Vec::new();
        for (tp, low) in lowest {
            let from = match self.cursors[&tp].stored {
                Some(s) if low < s => messages
                    .iter()
                    .filter(|m| store::is_from(&tp, *m) && m.offset() >= s)
                    .map(|m| m.offset())
                    .min(),
                _ => Some(low),
            };
            first.push((tp, from));
        }
        let mut reseek: Vec<TopicPartition> = Vec::new();
        for (tp, first) in first {
            let cursor = self.cursors.get_mut(&tp).expect("loaded above");
            let Some(first) = first else {
                // Nothing here at or after the stored offset. A partition first seen since its
                // assignment (read from the beginning) is sought there now, not read through
                // its history; a sought one waits for the seek to take; a synced one met
                // records processed before (dropped below).
                if cursor.sync == Sync::Unchecked {
                    reseek.push(tp);
                }
                continue;
            };
            match (cursor.sync, cursor.stored) {
                (_, Some(stored)) if first == stored => cursor.sync = Sync::Synced,
                (Sync::Sought, stored) => {
                    // The first record at or after the stored offset: what lies between was not
                    // delivered (transaction markers, aborted records, or deleted by retention).
                    if let Some(stored) = stored
                        && first - stored > 1
                    {
                        tracing::warn!(
                            group = schema,
                            topic = %tp.0,
                            partition = tp.1,
                            from = stored,
                            to = first,
                            "records between the stored offset and the first one delivered are not readable \
                             (deleted by retention, or aborted transactions)"
                        );
                    }
                    cursor.sync = Sync::Synced;
                }
                (Sync::Synced, stored) => {
                    tracing::info!(group = schema, topic = %tp.0, partition = tp.1, ?stored, first, "a batch does not start at the stored offset: reading again from there");
                    reseek.push(tp);
                }
                (Sync::Unchecked, _) => reseek.push(tp),
            }
        }
        for tp in &reseek {
            let cursor = self.cursors.get_mut(tp).expect("loaded above");
            let to = cursor.stored.map_or(Offset::Beginning, Offset::Offset);
            match consumer.seek(&tp.0, tp.1, to, Duration::from_secs(10)) {
                Ok(()) => {
                    cursor.sync = Sync::Sought;
                    tracing::info!(topic = %tp.0, partition = tp.1, ?to, "resuming from the offset stored in Postgres");
                }
                Err(e) => {
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "seek failed; will retry")
                }
            }
        }
        // What each partition keeps: nothing unless synced, and nothing below the stored offset.
        let keep_from: Vec<(&TopicPartition, Option<i64>)> = self
            .cursors
            .iter()
            .map(|(tp, c)| {
                let from = (c.sync == Sync::Synced).then(|| c.stored.unwrap_or(i64::MIN));
                (tp, from)
            })
            .collect();
        let delivered = messages.len();
        messages.retain(|m| {
            keep_from
                .iter()
                .find(|(tp, _)| store::is_from(tp, m))
                .and_then(|(_, from)| *from)
                .is_some_and(|from| m.offset() >= from)
        });
        let dropped = delivered - messages.len();
        if dropped > 0 {
            metrics::counter!("kassa_consumer_records_dropped_total", "group" => schema.to_owned())
                .increment(dropped as u64);
        }
        Ok(())
    }
}

/// The stored offset of `tp` moved from `before` (what this instance expected) to `now` while
/// this instance was not looking: a move back is re-read (the inbox drops what was applied); a
/// move forward over records nobody processed is a skip, reported.
async fn audit_move(
    conn: &mut PgConnection,
    schema: &str,
    tp: &TopicPartition,
    before: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    if now < before {
        tracing::warn!(group = schema, topic = %tp.0, partition = tp.1, from = before, to = now, "stored offset moved back: records are read again (the inbox drops what was applied)");
        return Ok(());
    }
    if now == before {
        return Ok(());
    }
    for skip in store::unprocessed(conn, schema, tp, before, now).await? {
        let records = u64::try_from(skip.to - skip.from).unwrap_or_default();
        let intended = !skip.intended_by.is_empty();
        metrics::counter!(
            "kassa_offset_skipped_records_total",
            "group" => schema.to_owned(),
            "intended" => if intended { "true" } else { "false" }
        )
        .increment(records);
        if intended {
            tracing::warn!(
                group = schema, topic = %tp.0, partition = tp.1, from = skip.from, to = skip.to, records,
                by = ?skip.intended_by,
                "records skipped without processing, as an operator asked"
            );
            continue;
        }
        tracing::error!(
            group = schema, topic = %tp.0, partition = tp.1, from = skip.from, to = skip.to, records,
            "the stored offset was moved past records that were never processed, and no operator move accounts for it: \
             they are skipped"
        );
        if !skip.reported {
            let reason = format!(
                "found by the runtime: the stored offset moved from {before} to {now} past unprocessed records"
            );
            store::record_move(
                conn,
                schema,
                tp,
                (Some(skip.from), skip.to),
                false,
                "unknown",
                &reason,
            )
            .await?;
        }
    }
    Ok(())
}
