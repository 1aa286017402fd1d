//! Where an order ships and whom to tell, as the customer gave them at checkout (validated by
//! the API, trusted for nothing but shipping and contact): carried on every `Reserve`, passed on
//! in inventory's line results (`LineOrder`) and published in `OrderCompleted` for the warehouse.

use serde::{Deserialize, Serialize};

/// A postal address (Avro record `PostalAddress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostalAddress {
    /// Who receives it.
    pub name: String,
    /// Street lines, 1 to 3.
    pub lines: Vec<String>,
    /// City or locality.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// State, province or region, where the country uses one.
    pub region: Option<String>,
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: String,
    /// A phone number for the carrier.
    pub phone: Option<String>,
}

/// Where to ship and whom to tell (Avro record `Fulfilment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfilment {
    /// Where to ship.
    pub shipping: PostalAddress,
    /// The billing address, when the customer gave one apart.
    pub billing: Option<PostalAddress>,
    /// The contact email address.
    pub email: String,
}
