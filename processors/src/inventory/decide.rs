//! The inventory decisions, as pure functions: given a SKU's stock and what an order line already
//! has, what a command does. No I/O here; the processor loads state, calls these in arrival order,
//! and writes the results.

use chrono::{DateTime, Duration, Utc};
use kassa_schemas::events::RejectReason;

/// The most units one order line may reserve.
pub const MAX_LINE_QUANTITY: i32 = 10_000;

/// The most units one SKU may count in all (on hand + reserved + committed): restocks and counts
/// beyond it are refused, so no move of units between the three can overflow.
pub const MAX_UNITS: i64 = kassa_schemas::events::inventory::MAX_STOCK_UNITS;

/// One SKU's stock. `on_hand + reserved + committed` only changes through restock / set-stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stock {
    /// Units free to reserve.
    pub on_hand: i64,
    /// Units held by active reservations.
    pub reserved: i64,
    /// Units sold (committed reservations).
    pub committed: i64,
}

/// Where an order line's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Units are held.
    Active,
    /// Units are sold.
    Committed,
    /// Units went back to stock.
    Released,
    /// Committed units came back to stock (compensation).
    Restocked,
    /// Nothing was held, for this reason.
    Rejected(RejectReason),
}

/// An order line's reservation (or rejection), as inventory remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Units asked for.
    pub quantity: i32,
    /// Where it stands.
    pub status: Status,
    /// When the hold may be expired by the orders processor.
    pub expires_at: DateTime<Utc>,
}

/// The answer to a reserve request (the same for a repeated request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveAnswer {
    /// Held until `expires_at`.
    Reserved {
        /// Hold end.
        expires_at: DateTime<Utc>,
    },
    /// Not held.
    Rejected(RejectReason),
}

/// Decides a reserve request. `existing` is what the same (order, line) already has: then the
/// first answer is repeated and nothing changes. Returns the answer and the reservation to store
/// (None when nothing changed).
pub fn reserve(
    stock: Option<&mut Stock>,
    existing: Option<&Reservation>,
    quantity: i32,
    hold: Duration,
    now: DateTime<Utc>,
) -> (ReserveAnswer, Option<Reservation>) {
    if let Some(previous) = existing {
        return (answer_of(previous), None);
    }
    let reject = |reason| {
        let stored = Reservation {
            quantity,
            status: Status::Rejected(reason),
            expires_at: now,
        };
        (ReserveAnswer::Rejected(reason), Some(stored))
    };
    if quantity <= 0 || quantity > MAX_LINE_QUANTITY {
        return reject(RejectReason::InvalidQuantity);
    }
    let Some(stock) = stock else {
        return reject(RejectReason::UnknownSku);
    };
    let units = i64::from(quantity);
    if stock.on_hand < units {
        return reject(RejectReason::OutOfStock);
    }
    stock.on_hand -= units;
    stock.reserved += units;
    let expires_at = now + hold;
    (
        ReserveAnswer::Reserved { expires_at },
        Some(Reservation {
            quantity,
            status: Status::Active,
            expires_at,
        }),
    )
}

/// The answer a stored reservation stands for.
fn answer_of(reservation: &Reservation) -> ReserveAnswer {
    match reservation.status {
        Status::Rejected(reason) => ReserveAnswer::Rejected(reason),
        _ => ReserveAnswer::Reserved {
            expires_at: reservation.expires_at,
        },
    }
}

/// What a release / commit / restock of an order line did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineChange {
    /// The reservation moved on; `units` changed place.
    Applied {
        /// Units moved.
        units: i32,
    },
    /// Nothing to do: no such reservation, or it is not in a state this command applies to.
    NoOp(&'static str),
}

/// Gives an active reservation's units back to stock.
pub fn release(stock: &mut Stock, reservation: Option<&mut Reservation>) -> LineChange {
    move_line(
        stock,
        reservation,
        Status::Active,
        Status::Released,
        |s, u| {
            s.reserved -= u;
            s.on_hand += u;
        },
    )
}

/// Turns an active reservation's units into sold stock.
pub fn commit(stock: &mut Stock, reservation: Option<&mut Reservation>) -> LineChange {
    move_line(
        stock,
        reservation,
        Status::Active,
        Status::Committed,
        |s, u| {
            s.reserved -= u;
            s.committed += u;
        },
    )
}

/// Returns a committed reservation's units to stock (compensation when a capture fails).
pub fn restock_line(stock: &mut Stock, reservation: Option<&mut Reservation>) -> LineChange {
    move_line(
        stock,
        reservation,
        Status::Committed,
        Status::Restocked,
        |s, u| {
            s.committed -= u;
            s.on_hand += u;
        },
    )
}

fn move_line(
    stock: &mut Stock,
    reservation: Option<&mut Reservation>,
    from: Status,
    to: Status,
    apply: impl FnOnce(&mut Stock, i64),
) -> LineChange {
    let Some(reservation) = reservation else {
        return LineChange::NoOp("unknown reservation");
    };
    if reservation.status != from {
        return LineChange::NoOp(match reservation.status {
            Status::Rejected(_) => "reservation was rejected",
            Status::Active => "reservation is still active",
            _ => "reservation already finished",
        });
    }
    apply(stock, i64::from(reservation.quantity));
    reservation.status = to;
    LineChange::Applied {
        units: reservation.quantity,
    }
}

/// Units held or sold (reserved + committed), checked.
fn taken(stock: &Stock) -> Option<i64> {
    stock.reserved.checked_add(stock.committed)
}

/// Adds delivered units to on-hand stock. Returns the change in on-hand units.
pub fn restock(stock: &mut Stock, quantity: i32) -> Result<i64, &'static str> {
    if quantity <= 0 {
        return Err("restock quantity must be positive");
    }
    let on_hand = stock
        .on_hand
        .checked_add(i64::from(quantity))
        .filter(|n| {
            taken(stock)
                .and_then(|t| t.checked_add(*n))
                .is_some_and(|all| all <= MAX_UNITS)
        })
        .ok_or("restock would take the SKU's units past the most one SKU may count")?;
    stock.on_hand = on_hand;
    Ok(i64::from(quantity))
}

/// Sets on-hand stock (free units) to a counted figure. Returns the change in on-hand units.
pub fn set_stock(stock: &mut Stock, on_hand: i64) -> Result<i64, &'static str> {
    if on_hand < 0 {
        return Err("on-hand stock cannot be negative");
    }
    if taken(stock)
        .and_then(|t| t.checked_add(on_hand))
        .is_none_or(|all| all > MAX_UNITS)
    {
        return Err("the count would take the SKU's units past the most one SKU may count");
    }
    let delta = on_hand
        .checked_sub(stock.on_hand)
        .ok_or("the change in stock does not fit")?;
    stock.on_hand = on_hand;
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    const HOLD: Duration = Duration::minutes(15);

    fn stocked(units: i64) -> Stock {
        Stock {
            on_hand: units,
            ..Stock::default()
        }
    }

    #[test]
    fn reserves_while_units_are_free_then_rejects_out_of_stock() {
        let mut stock = stocked(5);
        let (a, stored) = reserve(Some(&mut stock), None, 3, HOLD, now());
        assert_eq!(
            a,
            ReserveAnswer::Reserved {
                expires_at: now() + HOLD
            }
        );
        assert_eq!(stored.unwrap().status, Status::Active);
        assert_eq!(
            stock,
            Stock {
                on_hand: 2,
                reserved: 3,
                committed: 0
            }
        );
        let (b, _) = reserve(Some(&mut stock), None, 3, HOLD, now());
        assert_eq!(b, ReserveAnswer::Rejected(RejectReason::OutOfStock));
        assert_eq!(
            stock,
            Stock {
                on_hand: 2,
                reserved: 3,
                committed: 0
            },
            "a rejection changes nothing"
        );
        let (c, _) = reserve(Some(&mut stock), None, 2, HOLD, now());
        assert!(
            matches!(c, ReserveAnswer::Reserved { .. }),
            "the last units still go"
        );
        assert_eq!(stock.on_hand, 0);
    }

    #[test]
    fn rejects_unknown_skus_and_invalid_quantities() {
        assert_eq!(
            reserve(None, None, 1, HOLD, now()).0,
            ReserveAnswer::Rejected(RejectReason::UnknownSku)
        );
        let mut stock = stocked(100_000);
        for q in [0, -1, MAX_LINE_QUANTITY + 1] {
            let (answer, _) = reserve(Some(&mut stock), None, q, HOLD, now());
            assert_eq!(
                answer,
                ReserveAnswer::Rejected(RejectReason::InvalidQuantity),
                "quantity {q}"
            );
        }
        assert_eq!(stock, stocked(100_000));
    }

    #[test]
    fn a_repeated_reserve_gets_the_first_answer_and_changes_nothing() {
        let mut stock = stocked(1);
        let (first, stored) = reserve(Some(&mut stock), None, 1, HOLD, now());
        let stored = stored.unwrap();
        stock.on_hand += 10; // even with stock back, the answer is the first one
        let (again, changed) = reserve(Some(&mut stock), Some(&stored), 1, HOLD, now() + HOLD);
        assert_eq!(again, first);
        assert_eq!(changed, None);
        assert_eq!(
            stock,
            Stock {
                on_hand: 10,
                reserved: 1,
                committed: 0
            }
        );

        let rejected = Reservation {
            quantity: 5,
            status: Status::Rejected(RejectReason::OutOfStock),
            expires_at: now(),
        };
        let (again, _) = reserve(Some(&mut stock), Some(&rejected), 5, HOLD, now());
        assert_eq!(
            again,
            ReserveAnswer::Rejected(RejectReason::OutOfStock),
            "a rejection is repeated too"
        );
    }

    #[test]
    fn release_and_commit_apply_once_and_only_to_active_holds() {
        let mut stock = stocked(10);
        let (_, r1) = reserve(Some(&mut stock), None, 4, HOLD, now());
        let (_, r2) = reserve(Some(&mut stock), None, 3, HOLD, now());
        let (mut r1, mut r2) = (r1.unwrap(), r2.unwrap());
        assert_eq!(
            release(&mut stock, Some(&mut r1)),
            LineChange::Applied { units: 4 }
        );
        assert_eq!(
            release(&mut stock, Some(&mut r1)),
            LineChange::NoOp("reservation already finished")
        );
        assert_eq!(
            commit(&mut stock, Some(&mut r1)),
            LineChange::NoOp("reservation already finished")
        );
        assert_eq!(
            commit(&mut stock, Some(&mut r2)),
            LineChange::Applied { units: 3 }
        );
        assert_eq!(
            release(&mut stock, Some(&mut r2)),
            LineChange::NoOp("reservation already finished")
        );
        assert_eq!(
            release(&mut stock, None),
            LineChange::NoOp("unknown reservation")
        );
        assert_eq!(
            stock,
            Stock {
                on_hand: 7,
                reserved: 0,
                committed: 3
            }
        );
        assert_eq!(
            restock_line(&mut stock, Some(&mut r2)),
            LineChange::Applied { units: 3 }
        );
        assert_eq!(
            restock_line(&mut stock, Some(&mut r2)),
            LineChange::NoOp("reservation already finished")
        );
        assert_eq!(
            stock,
            Stock {
                on_hand: 10,
                reserved: 0,
                committed: 0
            }
        );
    }

    #[test]
    fn stock_counts_and_deliveries_are_validated() {
        let mut stock = stocked(3);
        assert_eq!(restock(&mut stock, 7), Ok(7));
        assert!(restock(&mut stock, 0).is_err());
        assert_eq!(set_stock(&mut stock, 4), Ok(-6));
        assert!(set_stock(&mut stock, -1).is_err());
        assert_eq!(stock.on_hand, 4);
    }

    #[test]
    fn counts_and_deliveries_never_overflow() {
        let mut stock = stocked(0);
        assert!(
            set_stock(&mut stock, i64::MAX).is_err(),
            "an absurd count is refused"
        );
        assert_eq!(set_stock(&mut stock, MAX_UNITS - 5), Ok(MAX_UNITS - 5));
        assert!(
            restock(&mut stock, 6).is_err(),
            "past the most one SKU may count"
        );
        assert_eq!(restock(&mut stock, 5), Ok(5));
        let (answer, stored) = reserve(Some(&mut stock), None, 10, HOLD, now());
        assert!(matches!(answer, ReserveAnswer::Reserved { .. }));
        assert!(
            set_stock(&mut stock, MAX_UNITS).is_err(),
            "held units count too"
        );
        let mut held = stored.unwrap();
        assert_eq!(
            release(&mut stock, Some(&mut held)),
            LineChange::Applied { units: 10 }
        );
        assert_eq!(stock.on_hand, MAX_UNITS);
        assert!(restock(&mut stock, i32::MAX).is_err());
    }

    #[test]
    fn units_are_conserved_whatever_the_sequence() {
        // A small exhaustive walk: every sequence of up to 6 operations over 3 lines keeps
        // on_hand + reserved + committed equal to what was stocked, and nothing negative.
        let ops = ["reserve", "release", "commit", "restock_line"];
        fn walk(depth: usize, stock: Stock, lines: [Option<Reservation>; 3], ops: &[&str]) {
            assert_eq!(stock.on_hand + stock.reserved + stock.committed, 5);
            assert!(stock.on_hand >= 0 && stock.reserved >= 0 && stock.committed >= 0);
            if depth == 0 {
                return;
            }
            for op in ops {
                for line in 0..3 {
                    let (mut s, mut l) = (stock, lines.clone());
                    match *op {
                        "reserve" => {
                            let (_, stored) =
                                reserve(Some(&mut s), l[line].as_ref(), 2, HOLD, now());
                            if let Some(stored) = stored {
                                l[line] = Some(stored);
                            }
                        }
                        "release" => _ = release(&mut s, l[line].as_mut()),
                        "commit" => _ = commit(&mut s, l[line].as_mut()),
                        _ => _ = restock_line(&mut s, l[line].as_mut()),
                    }
                    walk(depth - 1, s, l, ops);
                }
            }
        }
        walk(5, stocked(5), [None, None, None], &ops);
    }
}
