//! The API started in the test process on a free loopback port, against the real services.

use kassa_api::ApiConfig;
use kassa_api::auth::{KeyKind, create_key};

/// A running API and a key of each kind.
pub struct TestApi {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// A storefront key.
    pub storefront: String,
    /// An admin key.
    pub admin: String,
    /// The database, for checks.
    pub pool: sqlx::PgPool,
    /// The settings the API runs with.
    pub settings: kassa::settings::Settings,
}

/// Starts the API with the default settings, changed by `adjust`.
pub async fn start(adjust: impl FnOnce(&mut ApiConfig)) -> TestApi {
    let settings = super::setup().await;
    let pool = kassa::migrate::connect(&settings).await.expect("database");
    let name = uuid::Uuid::new_v4().simple().to_string();
    let storefront = create_key(&pool, KeyKind::Storefront, &format!("sf-{name}"))
        .await
        .expect("storefront key");
    let admin = create_key(&pool, KeyKind::Admin, &format!("admin-{name}"))
        .await
        .expect("admin key");
    let mut config = settings.api_config();
    config.addr = "127.0.0.1:0".parse().expect("address");
    adjust(&mut config);
    let addr = kassa_api::spawn(&config).await.expect("API starts");
    TestApi {
        base: format!("http://{addr}"),
        storefront,
        admin,
        pool,
        settings,
    }
}
