//! What one inventory batch decided: the answers, events and records gathered before they are
//! written in one go.

use super::*;

/// What one batch decided, gathered before writing.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) handled: Handled,
    /// SKUs whose stock changed.
    pub(super) touched: HashSet<String>,
    /// Order lines to insert or update.
    pub(super) changed: HashSet<(String, i32)>,
    pub(super) ignored: Vec<Ignored>,
    /// (cause index, key, event) to encode.
    pub(super) events: Vec<(usize, String, Envelope<InventoryEvent>)>,
    pub(super) give_back: Vec<flash::GiveBack>,
    /// Stock commands (deliveries, counts) applied: (event id, SKU, command).
    pub(super) stock_commands: Vec<(Uuid, String, &'static str)>,
}

impl Batch {
    pub(super) fn event(
        &mut self,
        cause: usize,
        key: &str,
        causation: Uuid,
        payload: impl Into<InventoryEvent>,
    ) {
        self.events.push((
            cause,
            key.to_owned(),
            Envelope::new(key, Some(causation), payload.into()),
        ));
    }

    pub(super) fn emit_reserve_answer(
        &mut self,
        cause: usize,
        e: &Envelope<CheckoutPayload>,
        r: &Reserve,
        answer: ReserveAnswer,
    ) {
        let (order_id, line_index, sku, quantity) =
            (r.order_id.clone(), r.line_index, r.sku.clone(), r.quantity);
        let order = Some(LineOrder::of(r));
        match answer {
            ReserveAnswer::Reserved { expires_at } => {
                let event = Reserved {
                    order_id,
                    line_index,
                    sku,
                    quantity,
                    expires_at,
                    order,
                };
                self.event(cause, &r.order_id, e.event_id, event);
            }
            ReserveAnswer::Rejected(reason) => {
                self.event(
                    cause,
                    &r.order_id,
                    e.event_id,
                    Rejected {
                        order_id,
                        line_index,
                        sku,
                        quantity,
                        reason,
                        order,
                    },
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn line_result(
        &mut self,
        cause: usize,
        e: &Envelope<InventoryCommand>,
        sku: &str,
        line: (&str, i32),
        command: &'static str,
        change: LineChange,
        records: &HashMap<(String, i32), LineRecord>,
    ) {
        let key = (line.0.to_owned(), line.1);
        match change {
            LineChange::Applied { units } => {
                self.touched.insert(sku.to_owned());
                self.changed.insert(key.clone());
                let (order_id, line_index, sku_owned) = (line.0.to_owned(), line.1, sku.to_owned());
                if command == "release" {
                    self.give_back_flash(&records[&key], line, units);
                    self.event(
                        cause,
                        line.0,
                        e.event_id,
                        Released {
                            order_id,
                            line_index,
                            sku: sku_owned,
                            quantity: units,
                        },
                    );
                } else {
                    self.committed(cause, e.event_id, line, sku, units);
                }
            }
            LineChange::NoOp(reason) => {
                // A repeated commit (orders asks again when an order waits too long for its
                // stock): answered again, with the same event id, in case the answer was lost.
                let record = records.get(&key).filter(|r| r.sku == sku);
                if command == "commit"
                    && let Some(record) = record
                    && record.reservation.status == decide::Status::Committed
                {
                    self.committed(cause, e.event_id, line, sku, record.reservation.quantity);
                }
                self.ignored.push(Ignored {
                    event_id: e.event_id,
                    command,
                    sku: sku.to_owned(),
                    line: Some(key),
                    reason,
                });
            }
        }
    }

    /// Gives a flash-sale line's units back to the sale they left (nothing for other lines).
    pub(super) fn give_back_flash(&mut self, record: &LineRecord, line: (&str, i32), units: i32) {
        if record.flash_sale {
            self.give_back
                .push(flash::GiveBack::of_line(record, line, units));
        }
    }

    /// Announces that a line's units are sold; the event id is the line's, the same however
    /// often it is announced.
    pub(super) fn committed(
        &mut self,
        cause: usize,
        causation: Uuid,
        line: (&str, i32),
        sku: &str,
        units: i32,
    ) {
        let payload = Committed {
            order_id: line.0.to_owned(),
            line_index: line.1,
            sku: sku.to_owned(),
            quantity: units,
        };
        let mut event = Envelope::new(line.0, Some(causation), InventoryEvent::from(payload));
        event.event_id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("kassa-committed-{}-{}", line.0, line.1).as_bytes(),
        );
        self.events.push((cause, line.0.to_owned(), event));
    }

    pub(super) fn restock(
        &mut self,
        cause: usize,
        e: &Envelope<InventoryCommand>,
        c: &Restock,
        skus: &mut HashMap<String, Versioned>,
        records: &mut HashMap<(String, i32), LineRecord>,
    ) {
        if let (Some(order), Some(index)) = (c.order_id.as_deref(), c.line_index) {
            // Compensation: committed units of an unpaid order come back.
            match line_change(skus, records, &c.sku, (order, index), decide::restock_line) {
                LineChange::Applied { units } => {
                    self.touched.insert(c.sku.clone());
                    self.changed.insert((order.to_owned(), index));
                    // Sold units that came back (the order was not paid): unsold after all.
                    self.give_back_flash(&records[&(order.to_owned(), index)], (order, index), units);
                    let on_hand = skus[&c.sku].stock.on_hand;
                    let event = Restocked {
                        sku: c.sku.clone(),
                        quantity_delta: i64::from(units),
                        on_hand,
                        order_id: Some(order.to_owned()),
                        reason: c.reason.clone(),
                    };
                    self.event(cause, order, e.event_id, event);
                }
                LineChange::NoOp(reason) => self.ignored.push(Ignored {
                    event_id: e.event_id,
                    command: "restock",
                    sku: c.sku.clone(),
                    line: Some((order.to_owned(), index)),
                    reason,
                }),
            }
            return;
        }
        let entry = skus.entry(c.sku.clone()).or_insert(Versioned {
            stock: decide::Stock::default(),
            version: None,
        });
        match decide::restock(&mut entry.stock, c.quantity) {
            Ok(delta) => {
                self.touched.insert(c.sku.clone());
                self.stock_commands
                    .push((e.event_id, c.sku.clone(), "restock"));
                let on_hand = entry.stock.on_hand;
                let event = Restocked {
                    sku: c.sku.clone(),
                    quantity_delta: delta,
                    on_hand,
                    order_id: None,
                    reason: c.reason.clone(),
                };
                self.event(cause, &c.sku, e.event_id, event);
            }
            Err(reason) => self.handled.invalid.push((cause, reason.to_owned())),
        }
    }

    pub(super) fn set_stock(
        &mut self,
        cause: usize,
        e: &Envelope<InventoryCommand>,
        c: &SetStock,
        skus: &mut HashMap<String, Versioned>,
    ) {
        let entry = skus.entry(c.sku.clone()).or_insert(Versioned {
            stock: decide::Stock::default(),
            version: None,
        });
        match decide::set_stock(&mut entry.stock, c.on_hand) {
            Ok(delta) => {
                self.touched.insert(c.sku.clone());
                self.stock_commands
                    .push((e.event_id, c.sku.clone(), "set_stock"));
                let event = Restocked {
                    sku: c.sku.clone(),
                    quantity_delta: delta,
                    on_hand: c.on_hand,
                    order_id: None,
                    reason: c.reason.clone(),
                };
                self.event(cause, &c.sku, e.event_id, event);
            }
            Err(reason) => self.handled.invalid.push((cause, reason.to_owned())),
        }
    }
}
