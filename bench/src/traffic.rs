//! The orders a saga bench places: the same sequence for kassa and for the naive checkout, so
//! both meet the same load. `mixed` traffic (the default) is what a shop sees: 1–3 lines over 200
//! SKUs, 90% with a card that authorizes, 5% with one that declines, 5% with a line out of stock.
//! `simple` is one line of one of 20 SKUs with a card that authorizes (the first runs' load).

use serde_json::{Value, json};

/// In-stock SKUs of mixed traffic.
const MIXED_SKUS: usize = 200;
/// SKUs with nothing on hand, one of which each out-of-stock order asks for.
const EMPTY_SKUS: usize = 10;
/// In-stock SKUs of simple traffic.
const SIMPLE_SKUS: usize = 20;
/// A Stripe test card that authorizes.
const AUTHORIZES: &str = "pm_card_visa";
/// A Stripe test card that declines (`card_declined`).
const DECLINES: &str = "pm_card_chargeDeclined";

/// The kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// 1–3 lines over 200 SKUs; 90% authorize, 5% decline, 5% ask for a SKU out of stock.
    Mixed,
    /// One line over 20 SKUs, every card authorizes.
    Simple,
}

/// How an order is meant to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Stock and payment are there: completed.
    Completes,
    /// The card declines: not completed.
    Declined,
    /// A line asks for a SKU with nothing on hand: rejected.
    OutOfStock,
}

/// One order to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// (SKU index in [`Catalog::skus`], quantity) per line.
    pub lines: Vec<(usize, i64)>,
    /// The payment method it pays with.
    pub payment_method: &'static str,
    /// How it should end.
    pub expect: Expect,
}

/// The SKUs of a run and the stock each gets.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Every SKU's name; the last [`Catalog::empty`] have nothing on hand.
    pub skus: Vec<String>,
    /// How many of the SKUs (at the end) have nothing on hand.
    pub empty: usize,
}

impl Catalog {
    /// The SKUs of `traffic` for run `prefix` (named `<prefix>-<i>`).
    pub fn new(traffic: Traffic, prefix: &str) -> Self {
        let (stocked, empty) = match traffic {
            Traffic::Mixed => (MIXED_SKUS, EMPTY_SKUS),
            Traffic::Simple => (SIMPLE_SKUS, 0),
        };
        Self {
            skus: (0..stocked + empty)
                .map(|i| format!("{prefix}-{i}"))
                .collect(),
            empty,
        }
    }

    /// The SKUs that have stock.
    pub fn stocked(&self) -> &[String] {
        &self.skus[..self.skus.len() - self.empty]
    }

    /// The SKUs with nothing on hand.
    pub fn empty(&self) -> &[String] {
        &self.skus[self.skus.len() - self.empty..]
    }

    /// Units each stocked SKU needs so that `orders` orders never run it out (every order takes
    /// at most 3 lines of at most 2 units of distinct SKUs).
    pub fn units_for(&self, orders: usize) -> i64 {
        let stocked = self.stocked().len().max(1);
        (orders * 6).div_ceil(stocked) as i64 * 2 + 10
    }

    /// The JSON body of `POST /api/orders` for `order`, by customer `customer`.
    pub fn body(&self, order: &Order, customer: &str) -> Value {
        let lines: Vec<Value> = order
            .lines
            .iter()
            .map(|(sku, quantity)| json!({"sku": self.skus[*sku], "quantity": quantity}))
            .collect();
        json!({"customer_id": customer, "payment_method_id": order.payment_method, "lines": lines})
    }
}

/// SplitMix64: a well-mixed 64-bit number from `x` (the same on every run).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Traffic {
    /// Its name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Traffic::Mixed => "mixed",
            Traffic::Simple => "simple",
        }
    }

    /// What its orders are, for a report.
    pub const fn description(self) -> &'static str {
        match self {
            Traffic::Mixed => {
                "1-3 lines over 200 SKUs; 90% pm_card_visa, 5% declined, 5% a line out of stock"
            }
            Traffic::Simple => "one line over 20 SKUs, pm_card_visa",
        }
    }

    /// The `i`-th order of the sequence over `catalog`.
    pub fn order(self, catalog: &Catalog, i: usize) -> Order {
        let stocked = catalog.stocked().len();
        match self {
            Traffic::Simple => Order {
                lines: vec![(i % stocked, 1)],
                payment_method: AUTHORIZES,
                expect: Expect::Completes,
            },
            Traffic::Mixed => {
                let seed = mix(i as u64);
                let count = 1 + (seed % 3) as usize;
                let mut lines: Vec<(usize, i64)> = Vec::with_capacity(count);
                let mut draw = seed;
                while lines.len() < count {
                    draw = mix(draw);
                    let sku = (draw % stocked as u64) as usize;
                    if lines.iter().all(|(s, _)| *s != sku) {
                        lines.push((sku, 1 + ((draw >> 32) % 2) as i64));
                    }
                }
                let (payment_method, expect) = match (seed >> 40) % 100 {
                    0..5 => (DECLINES, Expect::Declined),
                    5..10 => {
                        let empty = stocked + (draw >> 16) as usize % catalog.empty.max(1);
                        if let Some(last) = lines.last_mut() {
                            *last = (empty, 1);
                        }
                        (AUTHORIZES, Expect::OutOfStock)
                    }
                    _ => (AUTHORIZES, Expect::Completes),
                };
                Order {
                    lines,
                    payment_method,
                    expect,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_traffic_has_the_stated_shares_and_stays_within_its_skus() {
        let catalog = Catalog::new(Traffic::Mixed, "T");
        let orders: Vec<Order> = (0..20_000)
            .map(|i| Traffic::Mixed.order(&catalog, i))
            .collect();
        let share = |e: Expect| {
            orders.iter().filter(|o| o.expect == e).count() as f64 / orders.len() as f64
        };
        assert!((share(Expect::Declined) - 0.05).abs() < 0.01);
        assert!((share(Expect::OutOfStock) - 0.05).abs() < 0.01);
        for lines in 1..=3 {
            let n = orders.iter().filter(|o| o.lines.len() == lines).count();
            assert!(n > 6_000 && n < 7_400, "{n} orders of {lines} lines");
        }
        let stocked = catalog.stocked().len();
        for order in &orders {
            let mut skus: Vec<usize> = order.lines.iter().map(|l| l.0).collect();
            skus.sort_unstable();
            skus.dedup();
            assert_eq!(skus.len(), order.lines.len(), "distinct SKUs: {order:?}");
            let empty = order.lines.iter().filter(|l| l.0 >= stocked).count();
            assert_eq!(
                empty,
                usize::from(order.expect == Expect::OutOfStock),
                "{order:?}"
            );
            assert!(order.lines.iter().all(|l| (1..=2).contains(&l.1)));
        }
        let used: std::collections::HashSet<usize> = orders
            .iter()
            .flat_map(|o| o.lines.iter().map(|l| l.0))
            .collect();
        assert_eq!(used.len(), catalog.skus.len(), "every SKU is asked for");
    }

    #[test]
    fn stocked_skus_never_run_out() {
        let catalog = Catalog::new(Traffic::Mixed, "T");
        let orders = 5_000;
        let mut taken = vec![0i64; catalog.skus.len()];
        for i in 0..orders {
            for (sku, quantity) in Traffic::Mixed.order(&catalog, i).lines {
                taken[sku] += quantity;
            }
        }
        let most = taken[..catalog.stocked().len()].iter().max().copied();
        assert!(most.is_some_and(|m| m <= catalog.units_for(orders)));
    }

    #[test]
    fn the_sequence_is_the_same_every_time_and_simple_is_one_line() {
        let catalog = Catalog::new(Traffic::Mixed, "T");
        assert_eq!(
            Traffic::Mixed.order(&catalog, 7),
            Traffic::Mixed.order(&catalog, 7)
        );
        let simple = Catalog::new(Traffic::Simple, "S");
        let order = Traffic::Simple.order(&simple, 23);
        assert_eq!(order.lines, vec![(3, 1)]);
        assert_eq!(order.expect, Expect::Completes);
        assert_eq!(
            simple.body(&order, "c")["lines"][0]["sku"],
            json!("S-3"),
            "lines name their SKU"
        );
    }
}
