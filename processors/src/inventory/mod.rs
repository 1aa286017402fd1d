//! The inventory processor: owns stock and reservations. Its inputs are keyed by SKU, so one
//! instance owns each SKU at a time: it decides reservations in memory, in arrival order, and
//! writes a whole batch with a few set-based statements. Stock is cached per partition while the
//! partition is owned, and dropped when it is revoked (or a batch fails).

mod batch;
pub mod decide;
pub mod flash;
mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{Duration, Utc};
use kassa_schemas::events::checkout::{CheckoutPayload, Reserve};
use kassa_schemas::events::inventory::{
    Committed, InventoryCommand, InventoryEvent, LineOrder, Rejected, Released, Reserved, Restock,
    Restocked, SetStock,
};
use kassa_schemas::redis_link::RedisLink;
use kassa_schemas::{Codec, CodecError, Envelope, Topic};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::ConsumerGroup;
use crate::runtime::{Delivered, Emit, HandleError, Handled, Handler};
use batch::Batch;
use decide::{LineChange, Reservation, ReserveAnswer};
use store::{Ignored, LineRecord, Versioned};

/// What inventory reads: reserve requests and stock commands.
#[derive(Debug, Clone)]
pub enum Input {
    /// From `checkout.requests`.
    Checkout(Envelope<CheckoutPayload>),
    /// From `inventory.commands`.
    Command(Envelope<InventoryCommand>),
}

/// The inventory processor's handler.
pub struct Inventory {
    codec: Arc<Codec>,
    default_hold: Duration,
    /// Stock per partition it was delivered on, then per SKU, while the partition is owned.
    stock: HashMap<i32, HashMap<String, Versioned>>,
    redis: RedisLink,
    pool: PgPool,
    give_back: Vec<flash::GiveBack>,
    /// Order lines found to exist when a batch assumed they were new: the redo loads them.
    /// (New lines are not looked up first: a repeated reserve is rare, a lookup per line is not.)
    known_lines: HashSet<(String, i32)>,
    /// A batch's plain insert of new lines met one that exists: the redo asks which (see
    /// [`store::insert_lines`]).
    lines_may_exist: bool,
}

impl Inventory {
    /// A handler encoding with `codec`; holds default to `default_hold` when a request has none.
    /// `redis` is where flash-sale tokens go back; `pool` is where the give-backs are recorded
    /// until Redis took them.
    pub fn new(
        codec: Arc<Codec>,
        default_hold: std::time::Duration,
        redis: RedisLink,
        pool: PgPool,
    ) -> Self {
        Self {
            codec,
            default_hold: Duration::from_std(default_hold).unwrap_or(Duration::minutes(15)),
            stock: HashMap::new(),
            redis,
            pool,
            give_back: Vec::new(),
            known_lines: HashSet::new(),
            lines_may_exist: false,
        }
    }
}

/// The SKU and order line an input is about.
fn subject(input: &Input) -> (&str, Option<(&str, i32)>) {
    match input {
        Input::Checkout(e) => match &e.payload {
            CheckoutPayload::Reserve(r) => (&r.sku, Some((&r.order_id, r.line_index))),
        },
        Input::Command(e) => match &e.payload {
            InventoryCommand::Release(c) => (&c.sku, Some((&c.order_id, c.line_index))),
            InventoryCommand::Commit(c) => (&c.sku, Some((&c.order_id, c.line_index))),
            InventoryCommand::Restock(c) => (&c.sku, c.order_id.as_deref().zip(c.line_index)),
            InventoryCommand::SetStock(c) => (&c.sku, None),
        },
    }
}

impl Handler for Inventory {
    type Input = Input;

    fn group(&self) -> ConsumerGroup {
        ConsumerGroup::Inventory
    }

    async fn decode(&self, topic: Topic, bytes: &[u8]) -> Result<Input, CodecError> {
        match topic {
            Topic::CheckoutRequests => Ok(Input::Checkout(self.codec.decode(bytes).await?)),
            Topic::InventoryCommands => Ok(Input::Command(self.codec.decode(bytes).await?)),
            other => Err(CodecError::UnexpectedTopic(other.name())),
        }
    }

    fn event_id(input: &Input) -> Uuid {
        match input {
            Input::Checkout(e) => e.event_id,
            Input::Command(e) => e.event_id,
        }
    }

    async fn handle(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Delivered<Input>],
    ) -> Result<Handled, HandleError> {
        // Load what the batch needs that is not in memory: stock of new SKUs, and order lines.
        let mut missing: Vec<String> = Vec::new();
        let mut lines: Vec<(String, i32)> = Vec::new();
        // A SKU's state is cached under the partition its messages are delivered on (the one
        // whose revocation or failure forgets it), never one computed from a configured count.
        // A SKU is cached under one partition: the one it was first delivered on in this batch
        // (whose revocation or failure forgets it), never one computed from a configured count.
        // A message whose key is not its SKU is invalid (answered below) and caches nothing.
        let mut bucket_of: HashMap<&str, i32> = HashMap::new();
        for d in batch {
            let (sku, line) = subject(&d.input);
            if d.key.as_deref() != Some(sku) {
                continue;
            }
            let bucket = *bucket_of.entry(sku).or_insert(d.partition);
            if !self.stock.get(&bucket).is_some_and(|b| b.contains_key(sku)) {
                // Cached under another partition (topics of different partition counts): moved.
                match self.stock.values_mut().find_map(|skus| skus.remove(sku)) {
                    Some(cached) => {
                        self.stock
                            .entry(bucket)
                            .or_default()
                            .insert(sku.to_owned(), cached);
                    }
                    None if !missing.iter().any(|s| s == sku) => missing.push(sku.to_owned()),
                    None => {}
                }
            }
            if let Some((order, index)) = line {
                let key = (order.to_owned(), index);
                // A reserve's line is assumed new (checked by the insert); a command's is read.
                if matches!(d.input, Input::Command(_)) || self.known_lines.contains(&key) {
                    lines.push(key);
                }
            }
        }
        if !missing.is_empty() {
            let loaded = store::load_stock(conn, &missing).await?;
            for (sku, versioned) in loaded {
                if let Some(bucket) = bucket_of.get(sku.as_str()) {
                    self.stock
                        .entry(*bucket)
                        .or_default()
                        .insert(sku, versioned);
                }
            }
        }
        let mut records = store::load_lines(conn, &lines).await?;
        // Deliveries and counts are not idempotent by content: one applied before (a replay the
        // inbox no longer remembers) is recognised by its id, kept for good.
        let stock_command_ids: Vec<Uuid> = batch
            .iter()
            .filter_map(|d| match &d.input {
                Input::Command(e) if is_stock_command(&e.payload) => Some(e.event_id),
                _ => None,
            })
            .collect();
        let applied_before = store::applied_stock_commands(conn, &stock_command_ids).await?;
        let from_table: HashSet<(String, i32)> = records.keys().cloned().collect();

        let now = Utc::now();
        let mut out = Batch::default();
        for (index, d) in batch.iter().enumerate() {
            let (sku, _) = subject(&d.input);
            if d.key.as_deref() != Some(sku) {
                out.handled.invalid.push((
                    index,
                    format!("message key {:?} is not the SKU {sku}", d.key),
                ));
                continue;
            }
            let skus = self.stock.entry(bucket_of[sku]).or_default();
            match &d.input {
                Input::Checkout(e) => {
                    let CheckoutPayload::Reserve(r) = &e.payload;
                    let hold = if r.hold_seconds > 0 {
                        Duration::seconds(i64::from(r.hold_seconds))
                    } else {
                        self.default_hold
                    };
                    let key = (r.order_id.clone(), r.line_index);
                    let existing = records.get(&key).map(|rec| &rec.reservation);
                    let stock = skus.get_mut(sku).map(|v| &mut v.stock);
                    let had_stock = stock.is_some();
                    let (answer, stored) = decide::reserve(stock, existing, r.quantity, hold, now);
                    if let Some(reservation) = stored {
                        if had_stock && matches!(answer, ReserveAnswer::Reserved { .. }) {
                            out.touched.insert(sku.to_owned());
                        }
                        let line = record(r, reservation);
                        if matches!(answer, ReserveAnswer::Rejected(_)) {
                            // Admitted by a sale's gate, refused here: its units go back.
                            out.give_back_flash(&line, (&r.order_id, r.line_index), r.quantity);
                        }
                        records.insert(key.clone(), line);
                        out.changed.insert(key);
                    }
                    out.emit_reserve_answer(index, e, r, answer);
                }
                Input::Command(e) => match &e.payload {
                    InventoryCommand::Release(c) => {
                        let change = line_change(
                            skus,
                            &mut records,
                            sku,
                            (&c.order_id, c.line_index),
                            decide::release,
                        );
                        out.line_result(
                            index,
                            e,
                            sku,
                            (&c.order_id, c.line_index),
                            "release",
                            change,
                            &records,
                        );
                    }
                    InventoryCommand::Commit(c) => {
                        let change = line_change(
                            skus,
                            &mut records,
                            sku,
                            (&c.order_id, c.line_index),
                            decide::commit,
                        );
                        out.line_result(
                            index,
                            e,
                            sku,
                            (&c.order_id, c.line_index),
                            "commit",
                            change,
                            &records,
                        );
                    }
                    command if applied_before.contains(&e.event_id) => out.ignored.push(Ignored {
                        event_id: e.event_id,
                        command: if matches!(command, InventoryCommand::SetStock(_)) {
                            "set_stock"
                        } else {
                            "restock"
                        },
                        sku: sku.to_owned(),
                        line: None,
                        reason: "stock command applied before (a replay)",
                    }),
                    InventoryCommand::Restock(c) => out.restock(index, e, c, skus, &mut records),
                    InventoryCommand::SetStock(c) => out.set_stock(index, e, c, skus),
                },
            }
        }

        // Write: stock (version-checked), order lines, ignored commands; encode the events.
        let mut touched: Vec<(&String, &mut Versioned)> = self
            .stock
            .values_mut()
            .flat_map(|skus| skus.iter_mut())
            .filter(|(sku, _)| out.touched.contains(*sku))
            .collect();
        if !store::write_stock(conn, &mut touched).await? {
            return Err(HandleError::Conflict(
                "stock changed by another instance".into(),
            ));
        }
        let (updated, new): (Vec<_>, Vec<_>) = out
            .changed
            .iter()
            .map(|k| (k, &records[k]))
            .partition(|(k, _)| from_table.contains(*k));
        // The events are encoded while Postgres inserts the lines (the batch's largest write).
        let encode = async {
            let mut emit = Vec::with_capacity(out.events.len());
            for (cause, key, event) in &out.events {
                emit.push(Emit {
                    topic: Topic::InventoryEvents,
                    key: key.clone(),
                    payload: self.codec.encode(event).await?,
                    cause: *cause,
                });
            }
            Ok::<_, HandleError>(emit)
        };
        let (existed, emit) = tokio::join!(
            store::insert_lines(conn, &new, self.lines_may_exist),
            encode
        );
        let existed = match existed {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                self.lines_may_exist = true;
                return Err(HandleError::Conflict(
                    "an order line already exists: redoing the batch to learn which".into(),
                ));
            }
            existed => existed?,
        };
        let emit = emit?;
        if !existed.is_empty() {
            let n = existed.len();
            self.known_lines.extend(existed);
            return Err(HandleError::Conflict(format!(
                "{n} order line(s) already known: redoing the batch with them"
            )));
        }
        store::update_lines(conn, &updated).await?;
        store::write_ignored(conn, &out.ignored).await?;
        flash::record(conn, &out.give_back).await?;
        store::record_stock_commands(conn, &out.stock_commands).await?;
        out.handled.emit.extend(emit);
        self.known_lines.clear();
        self.lines_may_exist = false;
        self.give_back.extend(out.give_back);
        Ok(out.handled)
    }

    fn forget(&mut self, partitions: &[(Topic, i32)]) {
        for (_, partition) in partitions {
            self.stock.remove(partition);
        }
        self.give_back.clear();
    }

    async fn after_commit(&mut self) {
        // Off the consume loop: a slow or black-holed Redis never holds up the next batch. What it
        // does not confirm in time stays recorded and is retried by `flash::retry`.
        let releases = std::mem::take(&mut self.give_back);
        if !releases.is_empty() {
            let (pool, redis) = (self.pool.clone(), self.redis.clone());
            tokio::spawn(async move {
                flash::give_back(&pool, &redis, &releases, flash::GIVE_BACK_LIMIT).await
            });
        }
    }
}

/// Whether a command changes stock by content (a delivery or a count), not by an order line.
fn is_stock_command(command: &InventoryCommand) -> bool {
    match command {
        InventoryCommand::SetStock(_) => true,
        InventoryCommand::Restock(r) => r.order_id.is_none(),
        _ => false,
    }
}

fn record(r: &Reserve, reservation: Reservation) -> LineRecord {
    LineRecord {
        sku: r.sku.clone(),
        reservation,
        customer_id: Some(r.customer_id.clone()),
        flash_sale: r.flash_sale,
        flash_generation: r.flash_sale_generation.clone(),
    }
}

/// Applies a line transition (release / commit / restock of a line) to memory.
fn line_change(
    skus: &mut HashMap<String, Versioned>,
    records: &mut HashMap<(String, i32), LineRecord>,
    sku: &str,
    line: (&str, i32),
    apply: fn(&mut decide::Stock, Option<&mut Reservation>) -> LineChange,
) -> LineChange {
    let key = (line.0.to_owned(), line.1);
    let record = records.get_mut(&key).filter(|r| r.sku == sku);
    match skus.get_mut(sku) {
        Some(v) => apply(&mut v.stock, record.map(|r| &mut r.reservation)),
        None => LineChange::NoOp("unknown SKU"),
    }
}

/// The inventory processor's own settings: none yet (its hold is the shared default hold).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Settings {}

/// What the inventory processor runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Reservation hold when a request names none.
    pub default_hold: std::time::Duration,
}

impl crate::Processor for Inventory {
    const NAME: &'static str = "inventory";
    const INPUTS: &'static [Topic] = &[Topic::CheckoutRequests, Topic::InventoryCommands];
    type Settings = Settings;
    type Config = Config;

    fn config(_: &Settings, common: &crate::settings::Common) -> Result<Config, String> {
        Ok(Config {
            default_hold: common.default_hold,
        })
    }

    /// Runs the inventory processor (and its give-back retry).
    async fn run(
        shared: &crate::Shared,
        codec: Arc<Codec>,
        config: &Config,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), crate::ProcessorError> {
        let Some(pool) = crate::runtime::connect(&shared.runtime, 2, &mut shutdown.clone()).await
        else {
            return Ok(());
        };
        let redis = RedisLink::start(&shared.redis_url, std::time::Duration::from_secs(5));
        let retry = tokio::spawn(flash::retry(pool.clone(), redis.clone(), shutdown.clone()));
        let handler = Inventory::new(codec, config.default_hold, redis, pool);
        Ok(crate::runtime::run(&shared.runtime, handler, shutdown, vec![retry]).await?)
    }
}
