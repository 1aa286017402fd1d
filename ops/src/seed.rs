//! The small demo catalog `scripts/dev run` loads: products in the API's catalog, and their stock
//! set through `inventory.commands` (never by writing inventory's tables).

use std::time::Duration;

use kassa_schemas::events::inventory::{InventoryCommand, SetStock};
use kassa_schemas::{Codec, Envelope, Payload};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

use crate::settings::Settings;

/// One demo product: SKU, name, unit price in minor units, currency, units in stock.
pub struct DemoProduct {
    /// Stock-keeping unit.
    pub sku: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Unit price in minor units of `currency`.
    pub price_minor: i64,
    /// ISO 4217 currency.
    pub currency: &'static str,
    /// Units on hand to start with.
    pub stock: i64,
}

/// The demo catalog.
pub const DEMO_CATALOG: &[DemoProduct] = &[
    DemoProduct {
        sku: "TEE-BLK-M",
        name: "Black tee, M",
        price_minor: 1999,
        currency: "EUR",
        stock: 500,
    },
    DemoProduct {
        sku: "TEE-WHT-L",
        name: "White tee, L",
        price_minor: 1999,
        currency: "EUR",
        stock: 500,
    },
    DemoProduct {
        sku: "MUG-KASSA",
        name: "kassa mug",
        price_minor: 1250,
        currency: "EUR",
        stock: 200,
    },
    DemoProduct {
        sku: "HOODIE-GRY",
        name: "Grey hoodie",
        price_minor: 4900,
        currency: "EUR",
        stock: 100,
    },
    DemoProduct {
        sku: "SNEAKER-DROP",
        name: "Limited sneaker (flash sale)",
        price_minor: 14900,
        currency: "EUR",
        stock: 1000,
    },
];

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Writing the catalog failed.
    #[error("catalog: {0}")]
    Database(#[from] sqlx::Error),
    /// Encoding a stock command failed.
    #[error("encoding: {0}")]
    Codec(#[from] kassa_schemas::CodecError),
    /// Kafka did not acknowledge a stock command.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Whether any demo product is in the catalog already (`kassa seed --once` then does nothing).
pub async fn seeded(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let skus: Vec<&str> = DEMO_CATALOG.iter().map(|p| p.sku).collect();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api.products WHERE sku = ANY($1))")
        .bind(&skus)
        .fetch_one(pool)
        .await
}

/// Upserts the demo products and sets their stock; returns how many products were seeded.
pub async fn seed(settings: &Settings, pool: &PgPool) -> Result<usize, SeedError> {
    for p in DEMO_CATALOG {
        sqlx::query(
            "INSERT INTO api.products (sku, name, price_minor, currency) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_minor = excluded.price_minor,
               currency = excluded.currency, active = true, updated_at = now()",
        )
        .bind(p.sku)
        .bind(p.name)
        .bind(p.price_minor)
        .bind(p.currency)
        .execute(pool)
        .await?;
    }
    let codec = Codec::new(&settings.schema_registry_url)?;
    let producer: FutureProducer = crate::kafka::producer(settings)?;
    for p in DEMO_CATALOG {
        let command = Envelope::new(
            p.sku,
            None,
            InventoryCommand::SetStock(SetStock {
                sku: p.sku.into(),
                on_hand: p.stock,
                reason: "demo catalog".into(),
            }),
        );
        let bytes = codec.encode(&command).await?;
        producer
            .send(
                FutureRecord::to(InventoryCommand::TOPIC.name())
                    .key(p.sku)
                    .payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(DEMO_CATALOG.len())
}
