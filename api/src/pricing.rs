//! Server-side pricing: order lines priced from the catalog, never from the client. Pure.

use std::collections::HashMap;

/// A catalog entry as pricing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Unit price in minor units of `currency`.
    pub price_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
}

/// One priced line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PricedLine {
    /// Zero-based position.
    pub line_index: i32,
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i32,
    /// Catalog unit price, minor units.
    pub unit_price_minor: i64,
    /// quantity × unit price, minor units.
    pub line_total_minor: i64,
}

/// A priced order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The lines, in request order.
    pub lines: Vec<PricedLine>,
    /// Sum of the line totals, minor units.
    pub total_minor: i64,
    /// The one currency of every line.
    pub currency: String,
}

/// Why an order cannot be priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PricingError {
    /// These SKUs are not in the catalog (or not active).
    UnknownSkus(Vec<String>),
    /// The lines are priced in more than one currency.
    MixedCurrencies(Vec<String>),
    /// A total does not fit in 64 bits of minor units.
    Overflow,
}

/// Prices `lines` (SKU, quantity) from `catalog`.
pub fn price(
    lines: &[(String, i32)],
    catalog: &HashMap<String, Product>,
) -> Result<Priced, PricingError> {
    let mut unknown: Vec<String> = lines
        .iter()
        .filter(|(sku, _)| !catalog.contains_key(sku))
        .map(|(s, _)| s.clone())
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        unknown.dedup();
        return Err(PricingError::UnknownSkus(unknown));
    }
    let mut currencies: Vec<String> = lines
        .iter()
        .map(|(sku, _)| catalog[sku].currency.clone())
        .collect();
    currencies.sort();
    currencies.dedup();
    if currencies.len() > 1 {
        return Err(PricingError::MixedCurrencies(currencies));
    }
    let mut priced = Vec::with_capacity(lines.len());
    let mut total: i64 = 0;
    for (index, (sku, quantity)) in lines.iter().enumerate() {
        let unit = catalog[sku].price_minor;
        let line_total = unit
            .checked_mul(i64::from(*quantity))
            .ok_or(PricingError::Overflow)?;
        total = total
            .checked_add(line_total)
            .ok_or(PricingError::Overflow)?;
        priced.push(PricedLine {
            line_index: index as i32,
            sku: sku.clone(),
            quantity: *quantity,
            unit_price_minor: unit,
            line_total_minor: line_total,
        });
    }
    Ok(Priced {
        lines: priced,
        total_minor: total,
        currency: currencies.pop().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> HashMap<String, Product> {
        [
            ("TEE", 1999, "EUR"),
            ("MUG", 1250, "EUR"),
            ("HAT", 900, "USD"),
            ("GOLD", i64::MAX / 2, "EUR"),
        ]
        .into_iter()
        .map(|(sku, price, cur)| {
            (
                sku.to_owned(),
                Product {
                    price_minor: price,
                    currency: cur.to_owned(),
                },
            )
        })
        .collect()
    }

    #[test]
    fn prices_every_line_from_the_catalog_in_minor_units() {
        let priced = price(&[("TEE".into(), 3), ("MUG".into(), 1)], &catalog()).unwrap();
        assert_eq!(priced.total_minor, 3 * 1999 + 1250);
        assert_eq!(priced.currency, "EUR");
        assert_eq!(priced.lines[0].line_total_minor, 5997);
        assert_eq!(priced.lines[1].line_index, 1);
        assert_eq!(priced.lines[1].unit_price_minor, 1250);
    }

    #[test]
    fn refuses_unknown_skus_mixed_currencies_and_overflow() {
        assert_eq!(
            price(
                &[("NOPE".into(), 1), ("TEE".into(), 1), ("NOPE".into(), 2)],
                &catalog()
            ),
            Err(PricingError::UnknownSkus(vec!["NOPE".into()]))
        );
        assert_eq!(
            price(&[("TEE".into(), 1), ("HAT".into(), 1)], &catalog()),
            Err(PricingError::MixedCurrencies(vec![
                "EUR".into(),
                "USD".into()
            ]))
        );
        assert_eq!(
            price(&[("GOLD".into(), 3)], &catalog()),
            Err(PricingError::Overflow)
        );
        assert_eq!(
            price(&[("GOLD".into(), 1), ("GOLD".into(), 2)], &catalog()),
            Err(PricingError::Overflow)
        );
    }
}
