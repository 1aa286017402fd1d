//! Where an order ships and whom to tell, as a storefront sends it with an order (`fulfilment`
//! in `POST /api/orders` and cart checkout): validated at the edge by the rules the OpenAPI
//! document states (lengths, a country of ISO 3166-1, an email address's shape, a phone number's
//! characters), stored with the order, and carried to the warehouse in `OrderCompleted`. It is
//! trusted for nothing but shipping and contact.

use kassa_schemas::events::fulfilment::{Fulfilment, PostalAddress};
use serde::{Deserialize, Serialize};

use crate::problem::FieldError;

/// The email pattern the server enforces (ASCII local part and domain, at least one dot).
pub const EMAIL_PATTERN: &str =
    "^[A-Za-z0-9.!#$%&'*+/=?^_{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63})+$";
/// The phone pattern the server enforces: an optional `+`, then digits, spaces, `(`, `)`, `-`.
pub const PHONE_PATTERN: &str = "^\\+?[0-9 ()-]{4,32}$";
/// Longest email address.
const EMAIL_MAX: usize = 254;
/// Characters of an email's local part besides letters and digits.
const LOCAL_PUNCTUATION: &str = ".!#$%&'*+/=?^_{|}~-";

/// Where to ship and whom to tell.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct FulfilmentBody {
    /// The contact email address (order notifications go there).
    #[schema(
        pattern = "^[A-Za-z0-9.!#$%&'*+/=?^_{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63})+$",
        max_length = 254
    )]
    pub email: String,
    /// Where to ship.
    pub shipping_address: AddressBody,
    /// The billing address, when it is not the shipping address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_address: Option<AddressBody>,
}

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct AddressBody {
    /// Who receives it.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Street lines, 1 to 3, each 1 to 100 characters.
    #[schema(schema_with = lines_schema)]
    pub lines: Vec<String>,
    /// City or locality.
    #[schema(min_length = 1, max_length = 100)]
    pub city: String,
    /// Postal code.
    #[schema(min_length = 1, max_length = 20)]
    pub postal_code: String,
    /// State, province or region, where the country uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 100)]
    pub region: Option<String>,
    /// ISO 3166-1 alpha-2 country code, upper case.
    #[schema(schema_with = country_schema)]
    pub country: String,
    /// A phone number for the carrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^\\+?[0-9 ()-]{4,32}$")]
    pub phone: Option<String>,
}

/// An address's street lines, for the OpenAPI document.
fn lines_schema() -> utoipa::openapi::schema::Array {
    let line = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .min_length(Some(1))
        .max_length(Some(100));
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(line)
        .min_items(Some(1))
        .max_items(Some(3))
        .description(Some("street lines, 1 to 3"))
        .build()
}

/// The countries of ISO 3166-1 as their alpha-2 codes, for the OpenAPI document.
fn country_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(countries()))
        .description(Some("ISO 3166-1 alpha-2 country code, upper case"))
        .build()
}

/// Every ISO 3166-1 alpha-2 code.
fn countries() -> impl Iterator<Item = &'static str> {
    celes::Country::get_countries()
        .into_iter()
        .map(|c| c.alpha2)
}

/// Whether `code` is an ISO 3166-1 alpha-2 code, upper case.
fn is_country(code: &str) -> bool {
    countries().any(|c| c == code)
}

/// Whether `text` is an email address by [`EMAIL_PATTERN`] (and at most 254 characters).
pub fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    let local_ok = (1..=64).contains(&local.len())
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || LOCAL_PUNCTUATION.contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len()) && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    text.len() <= EMAIL_MAX && local_ok && domain_ok
}

/// Whether `text` is a phone number by [`PHONE_PATTERN`].
fn is_phone(text: &str) -> bool {
    let rest = text.strip_prefix('+').unwrap_or(text);
    (4..=32).contains(&rest.len())
        && rest
            .chars()
            .all(|c| c.is_ascii_digit() || " ()-".contains(c))
}

impl FulfilmentBody {
    /// The fulfilment as events carry it (of a body [`parse`] passed).
    pub fn to_event(&self) -> Fulfilment {
        Fulfilment {
            shipping: self.shipping_address.to_event(),
            billing: self.billing_address.as_ref().map(AddressBody::to_event),
            email: self.email.clone(),
        }
    }
}

impl AddressBody {
    /// The address as events carry it.
    fn to_event(&self) -> PostalAddress {
        PostalAddress {
            name: self.name.clone(),
            lines: self.lines.clone(),
            city: self.city.clone(),
            postal_code: self.postal_code.clone(),
            region: self.region.clone(),
            country: self.country.clone(),
            phone: self.phone.clone(),
        }
    }
}

/// Checks `body`'s every rule, naming each broken one under `field` (e.g. `fulfilment`) in
/// `errors`; whether all hold.
pub fn parse(body: &FulfilmentBody, field: &str, errors: &mut Vec<FieldError>) -> bool {
    let before = errors.len();
    let mut bad = |at: String, message: &str| {
        errors.push(FieldError {
            field: at,
            message: message.to_owned(),
        })
    };
    if !is_email(&body.email) {
        bad(
            format!("{field}.email"),
            "an email address: name@domain.example (ASCII, at most 254 characters)",
        );
    }
    address(
        &body.shipping_address,
        &format!("{field}.shipping_address"),
        &mut bad,
    );
    if let Some(billing) = &body.billing_address {
        address(billing, &format!("{field}.billing_address"), &mut bad);
    }
    errors.len() == before
}

/// Checks one address's rules, naming each broken one under `at`.
fn address(body: &AddressBody, at: &str, bad: &mut impl FnMut(String, &str)) {
    let mut text = |name: &str, value: &str, most: usize| {
        if !(1..=most).contains(&value.chars().count()) {
            bad(format!("{at}.{name}"), &format!("1 to {most} characters"));
        }
    };
    text("name", &body.name, 100);
    text("city", &body.city, 100);
    text("postal_code", &body.postal_code, 20);
    if let Some(region) = &body.region {
        text("region", region, 100);
    }
    for (i, line) in body.lines.iter().enumerate() {
        text(&format!("lines[{i}]"), line, 100);
    }
    if !(1..=3).contains(&body.lines.len()) {
        bad(format!("{at}.lines"), "1 to 3 street lines");
    }
    if !is_country(&body.country) {
        bad(
            format!("{at}.country"),
            "an ISO 3166-1 alpha-2 country code, upper case (e.g. DE)",
        );
    }
    if body.phone.as_deref().is_some_and(|p| !is_phone(p)) {
        bad(
            format!("{at}.phone"),
            "4 to 32 of digits, spaces, '(', ')', '-', after an optional '+'",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> FulfilmentBody {
        FulfilmentBody {
            email: "ada@shop.example".into(),
            shipping_address: AddressBody {
                name: "Ada Lovelace".into(),
                lines: vec!["Kassa Street 1".into()],
                city: "Berlin".into(),
                postal_code: "10115".into(),
                region: None,
                country: "DE".into(),
                phone: Some("+49 30 1234567".into()),
            },
            billing_address: None,
        }
    }

    #[test]
    fn a_good_address_passes_and_becomes_the_events_fulfilment() {
        let mut errors = Vec::new();
        assert!(parse(&body(), "fulfilment", &mut errors), "{errors:?}");
        let parsed = body().to_event();
        assert_eq!(parsed.shipping.country, "DE");
        assert_eq!(parsed.email, "ada@shop.example");
    }

    #[test]
    fn every_broken_rule_is_named_by_its_field() {
        let mut bad = body();
        bad.email = "ada@localhost".into();
        bad.shipping_address.country = "de".into();
        bad.shipping_address.lines = vec![];
        bad.shipping_address.phone = Some("call me".into());
        bad.billing_address = Some(AddressBody {
            postal_code: "x".repeat(21),
            ..body().shipping_address
        });
        let mut errors = Vec::new();
        assert!(!parse(&bad, "fulfilment", &mut errors));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "fulfilment.email",
                "fulfilment.shipping_address.lines",
                "fulfilment.shipping_address.country",
                "fulfilment.shipping_address.phone",
                "fulfilment.billing_address.postal_code",
            ]
        );
    }

    #[test]
    fn emails_and_phones_follow_the_documented_patterns() {
        let email = regex_lite::Regex::new(EMAIL_PATTERN).unwrap();
        let phone = regex_lite::Regex::new(PHONE_PATTERN).unwrap();
        for text in [
            "ada@shop.example",
            "a.b+c@x-y.co.uk",
            "ada@localhost",
            "@shop.example",
            "ada@shop..example",
            "ada@.example",
            "ada@shop.example.",
            "ä@shop.example",
            "a@b@c.de",
            "ada shop@x.de",
        ] {
            assert_eq!(is_email(text), email.is_match(text), "{text}");
        }
        for text in [
            "+49 30 1234567",
            "(030) 12-34",
            "+1",
            "12a4",
            "++1234",
            "1234",
        ] {
            assert_eq!(is_phone(text), phone.is_match(text), "{text}");
        }
        assert!(is_country("DE") && !is_country("de") && !is_country("XX"));
    }

    #[test]
    fn the_document_states_the_patterns_the_server_enforces() {
        let body =
            serde_json::to_value(<FulfilmentBody as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(body["properties"]["email"]["pattern"], EMAIL_PATTERN);
        let address =
            serde_json::to_value(<AddressBody as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(address["properties"]["phone"]["pattern"], PHONE_PATTERN);
        assert_eq!(
            address["properties"]["country"]["enum"]
                .as_array()
                .map(Vec::len),
            Some(countries().count())
        );
    }
}
