//! The API started in the test process on a free loopback port, against the real services.

use kassa_api::ApiConfig;
use kassa_api::auth::{KeyKind, create_key};

/// A running API and a key of each kind.
pub struct TestApi {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// A storefront key.
    pub storefront: String,
    /// The storefront key's name (the storefront its orders are placed at).
    pub storefront_name: String,
    /// An admin key.
    pub admin: String,
    /// The admin key's name (what actions taken with it are recorded under).
    pub admin_name: String,
    /// The database, for checks.
    pub pool: sqlx::PgPool,
    /// The settings the API runs with.
    pub settings: kassa::settings::Settings,
    /// The client the request helpers share (one connection pool per test).
    http: reqwest::Client,
}

/// Starts the API with the default settings, changed by `adjust`.
pub async fn start(adjust: impl FnOnce(&mut ApiConfig)) -> TestApi {
    let settings = super::setup().await;
    let pool = kassa::migrate::connect(&settings).await.expect("database");
    let name = uuid::Uuid::new_v4().simple().to_string();
    let storefront_name = format!("sf-{name}");
    let storefront = create_key(&pool, KeyKind::Storefront, &storefront_name)
        .await
        .expect("storefront key");
    let admin_name = format!("admin-{name}");
    let admin = create_key(&pool, KeyKind::Admin, &admin_name)
        .await
        .expect("admin key");
    let mut config = settings.api_config();
    config.addr = "127.0.0.1:0".parse().expect("address");
    adjust(&mut config);
    let addr = kassa_api::spawn(&config).await.expect("API starts");
    TestApi {
        base: format!("http://{addr}"),
        storefront,
        storefront_name,
        admin,
        admin_name,
        pool,
        settings,
        http: reqwest::Client::new(),
    }
}

/// The status of an answer and its problem `code` (empty when the body is not a problem).
pub async fn problem_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

impl TestApi {
    /// A request to `path` (after the base URL) with `key` as the bearer.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
    }

    /// A request to `path` as this test's storefront.
    pub fn as_storefront(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path, &self.storefront)
    }

    /// Tokens left in the flash sale of `sku` (`GET /admin/flash-sales/{sku}`; panics if none runs).
    pub async fn flash_tokens(&self, sku: &str) -> i64 {
        let sale: serde_json::Value = self
            .as_admin(reqwest::Method::GET, &format!("/admin/flash-sales/{sku}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sale["sale"]["tokens"].as_i64().expect("a sale runs")
    }

    /// A request to `path` as this test's admin.
    pub fn as_admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path, &self.admin)
    }
}
