//! The identifiers the API takes from clients, parsed once at the edge: a value of these types
//! is well-formed, so nothing behind the edge checks it again. Each parser says, on failure, the
//! rule the client broke.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

/// Characters of ids other than SKUs: letters, digits and these.
const ID_PUNCTUATION: &str = "-_.@";

/// An id of 1 to `max` characters: letters, digits, `-`, `_`, `.`, `@`.
fn id(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(c))
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $rule:expr, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// What a well-formed value looks like (the message a client gets).
            pub const RULE: &'static str = $rule;

            /// Parses `value`; the rule it breaks otherwise.
            pub fn parse(value: &str) -> Result<Self, &'static str> {
                let valid: fn(&str) -> bool = $valid;
                if valid(value) { Ok(Self(value.to_owned())) } else { Err(Self::RULE) }
            }

            /// The value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A SKU: 1 to 64 characters, letters, digits, `.`, `_`, `-`, starting with a letter or digit
    /// (the catalog's own CHECK says the same).
    Sku,
    "1 to 64 characters: letters, digits, '.', '_', '-'",
    |value| {
        let mut chars = value.chars();
        value.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    }
);

string_id!(
    /// A customer, as the storefront knows them.
    CustomerId,
    "1 to 128 characters: letters, digits, '-', '_', '.', '@'",
    |value| id(value, 128)
);

string_id!(
    /// A payment method to authorize (e.g. `pm_card_visa`).
    PaymentMethodId,
    "1 to 255 characters: letters, digits, '-', '_', '.'",
    |value| id(value, 255)
);

string_id!(
    /// An `Idempotency-Key`: the same key and body get the same answer for 24 hours.
    IdempotencyKey,
    "1 to 255 visible ASCII characters",
    |value| !value.is_empty() && value.len() <= 255 && value.bytes().all(|b| b.is_ascii_graphic())
);

/// An order id (a UUID the API assigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderId(pub Uuid);

impl OrderId {
    /// Parses an order id from a path; None for anything that is not one.
    pub fn parse(value: &str) -> Option<Self> {
        Uuid::parse_str(value).ok().map(OrderId)
    }
}

/// The `X-Customer-Id` header: the customer a request is made for (None: absent or malformed).
#[derive(Debug, Clone)]
pub struct XCustomerId(pub Option<CustomerId>);

impl<S: Send + Sync> FromRequestParts<S> for XCustomerId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get("x-customer-id")
            .and_then(|v| v.to_str().ok());
        Ok(XCustomerId(header.and_then(|h| CustomerId::parse(h).ok())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_at_the_edge_and_say_the_rule_they_break() {
        assert_eq!(
            Sku::parse("TEE-BLK-M").map(|s| s.to_string()),
            Ok("TEE-BLK-M".into())
        );
        for bad in ["", "-LEADING", "with space", &"X".repeat(65)] {
            assert_eq!(Sku::parse(bad), Err(Sku::RULE), "{bad:?}");
        }
        assert!(CustomerId::parse("cus_1@shop.example").is_ok());
        assert!(CustomerId::parse("cus 1").is_err());
        assert!(PaymentMethodId::parse(&"p".repeat(255)).is_ok());
        assert!(PaymentMethodId::parse(&"p".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("key with space").is_err());
        assert!(IdempotencyKey::parse("k\u{0}").is_err());
        assert!(OrderId::parse("01a237f8-e20a-77c1-88ad-37f842bf8ce9").is_some());
        assert!(OrderId::parse("not-an-order").is_none());
    }
}
