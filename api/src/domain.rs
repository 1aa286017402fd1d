//! The identifiers the API takes from clients, parsed once at the edge: a value of these types
//! is well-formed, so nothing behind the edge checks it again. Each parser says, on failure, the
//! rule the client broke.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::problem::Problem;

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

/// A string schema: `pattern`, 1 to `max` characters, `rule` as its description.
fn string_schema(pattern: &str, max: usize, rule: &str) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(rule))
        .build()
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $rule:expr, $pattern:expr, $max:expr, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// What a well-formed value looks like (the message a client gets).
            pub const RULE: &'static str = $rule;
            /// The same rule as an ECMA-262 pattern, for the OpenAPI document.
            pub const PATTERN: &'static str = $pattern;

            /// The OpenAPI schema of a well-formed value: the rule, declared.
            pub fn schema() -> utoipa::openapi::Object {
                string_schema(Self::PATTERN, $max, Self::RULE)
            }

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
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    64,
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
    "^[A-Za-z0-9._@-]{1,128}$",
    128,
    |value| id(value, 128)
);

string_id!(
    /// A payment method to authorize (e.g. `pm_card_visa`).
    PaymentMethodId,
    "1 to 255 characters: letters, digits, '-', '_', '.', '@'",
    "^[A-Za-z0-9._@-]{1,255}$",
    255,
    |value| id(value, 255)
);

string_id!(
    /// An `Idempotency-Key`: the same key and body get the same answer for 24 hours.
    IdempotencyKey,
    "1 to 255 visible ASCII characters",
    "^[!-~]{1,255}$",
    255,
    |value| !value.is_empty() && value.len() <= 255 && value.bytes().all(|b| b.is_ascii_graphic())
);

string_id!(
    /// A storefront's name (its API key's name), as the admin API takes it.
    StorefrontName,
    "1 to 100 characters, no control characters",
    "^[^\\x00-\\x1f\\x7f]{1,100}$",
    100,
    |value| (1..=100).contains(&value.chars().count()) && !value.chars().any(|c| c.is_ascii_control())
);

string_id!(
    /// Where kassa sends something on its own (a webhook endpoint, a storefront's page): an
    /// absolute `http://` or `https://` URL with a host name or address, up to 2,000 characters.
    WebUrl,
    "an absolute http:// or https:// URL: a host (letters, digits, '.', '-'), an optional port, an optional path of visible ASCII; up to 2,000 characters",
    "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$",
    2000,
    |value| {
        let Some(rest) = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
        else {
            return false;
        };
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let (host, port) = authority.split_once(':').map_or((authority, None), |(h, p)| (h, Some(p)));
        value.len() <= 2000
            && !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
            && path.bytes().all(|b| b.is_ascii_graphic())
    }
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

/// The `X-Customer-Id` header: the customer a request is made for (None: absent). A header that
/// is present but malformed is refused (400), never taken for an absent one.
#[derive(Debug, Clone)]
pub struct XCustomerId(pub Option<CustomerId>);

impl XCustomerId {
    /// The header's name.
    pub const NAME: &'static str = "X-Customer-Id";

    /// The customer, or 400 when the header is absent.
    pub fn required(self) -> Result<CustomerId, Problem> {
        self.0
            .ok_or_else(|| Problem::invalid(Self::NAME, "the header is required"))
    }

    /// Reads the header from `headers`.
    pub fn of(headers: &axum::http::HeaderMap) -> Result<Self, Problem> {
        let Some(value) = headers.get(Self::NAME) else {
            return Ok(XCustomerId(None));
        };
        let text = value.to_str().unwrap_or("\u{0}");
        CustomerId::parse(text)
            .map(|c| XCustomerId(Some(c)))
            .map_err(|rule| Problem::invalid(Self::NAME, rule))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for XCustomerId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        Self::of(&parts.headers)
    }
}

/// A guest cart's id: issued by the server (`POST /api/carts`), 128 random bits, so it cannot be
/// guessed; ids a client makes up are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuestCartId(String);

impl GuestCartId {
    /// `gc_` and 32 lower-case hex digits.
    pub const PATTERN: &'static str = "^gc_[0-9a-f]{32}$";

    /// The OpenAPI schema of an id the server could have issued.
    pub fn schema() -> utoipa::openapi::Object {
        string_schema(Self::PATTERN, 35, "a guest cart id from `POST /api/carts`")
    }

    /// A new random id.
    pub fn issue() -> Self {
        Self(format!("gc_{}", Uuid::new_v4().simple()))
    }

    /// Parses an id the server could have issued; None for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        let hex = value.strip_prefix("gc_")?;
        (hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(value.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
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
        let issued = GuestCartId::issue();
        assert_eq!(GuestCartId::parse(issued.as_str()), Some(issued.clone()));
        for made_up in [
            "gc_1",
            "my-cart",
            "GC_0123456789abcdef0123456789abcdef",
            "gc_0123456789ABCDEF0123456789abcdef",
        ] {
            assert_eq!(GuestCartId::parse(made_up), None, "{made_up}");
        }
    }

    #[test]
    fn the_declared_patterns_say_what_the_parsers_enforce() {
        // Each pattern, read as a regular expression, accepts and refuses what its parser does.
        /// A pattern, the parser it declares, and samples to compare them on.
        type Case<'a> = (&'a str, fn(&str) -> bool, &'a [&'a str]);
        let cases: [Case; 6] = [
            (
                Sku::PATTERN,
                |v| Sku::parse(v).is_ok(),
                &["TEE-BLK-M", "a", "-x", "a b", "", "é"],
            ),
            (
                CustomerId::PATTERN,
                |v| CustomerId::parse(v).is_ok(),
                &["cus_1@shop.example", "", "a b", "é"],
            ),
            (
                PaymentMethodId::PATTERN,
                |v| PaymentMethodId::parse(v).is_ok(),
                &["pm_card_visa", "pm card", ""],
            ),
            (
                IdempotencyKey::PATTERN,
                |v| IdempotencyKey::parse(v).is_ok(),
                &["k-1", "k 1", "", "\u{7f}"],
            ),
            (
                StorefrontName::PATTERN,
                |v| StorefrontName::parse(v).is_ok(),
                &["sf-1", "Demo shop", "", "a\u{0}b", "tab\there", "é"],
            ),
            (
                WebUrl::PATTERN,
                |v| WebUrl::parse(v).is_ok(),
                &[
                    "https://shop.example/hooks?x=1",
                    "http://127.0.0.1:8080/hooks",
                    "http://127.0.0.1:8080",
                    "ftp://shop.example/",
                    "https://",
                    "https://shop.example:/x",
                    "https://shop.example:123456/",
                    "https://shop.example/a b",
                    "https://user@shop.example/",
                    "/hooks",
                ],
            ),
        ];
        for (pattern, parser, samples) in cases {
            let regex = regex_lite::Regex::new(pattern).expect("a valid pattern");
            for sample in samples {
                assert_eq!(
                    regex.is_match(sample),
                    parser(sample),
                    "{pattern} on {sample:?}"
                );
            }
        }
        let long = "x".repeat(65);
        assert!(
            !regex_lite::Regex::new(Sku::PATTERN)
                .unwrap()
                .is_match(&long)
        );
    }
}
