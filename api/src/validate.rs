//! What well-formed identifiers look like at the edge (SKUs, customer and payment method ids,
//! keys): checked before anything is stored or sent.

/// Whether `value` is a well-formed id (customer, payment method, key): 1 to `max` characters,
/// letters, digits, `-`, `_`, `.`, `@`.
pub(crate) fn valid_id(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// Whether `value` is a well-formed SKU: 1 to 64 characters, letters, digits, '.', '_', '-',
/// starting with a letter or digit (the catalog's own CHECK says the same).
pub(crate) fn valid_sku(value: &str) -> bool {
    let mut chars = value.chars();
    value.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}
