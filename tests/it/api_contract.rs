//! The HTTP API against its own OpenAPI document, with tools that are not kassa's (PyPI, pinned,
//! installed by `scripts/dev`; `KASSA_TEST_API_TOOLS` names their directory):
//!
//! - schemathesis, all checks and all phases (examples, coverage, fuzzing, stateful through the
//!   document's links) with a fixed seed, against `kassa run api` as deployed, once with a
//!   storefront key and once with an admin key: no failure. The document and the server cannot
//!   disagree without this test failing.
//! - a client generated from the document (openapi-python-client) places an order and follows it
//!   to its end, every answer parsed into the generated types.

use std::path::{Path, PathBuf};

use kassa_api::auth::{KeyKind, create_key};
use reqwest::Method;

use crate::common;
use crate::common::http::{free_port, wait_until};
use crate::common::processes::Component;

/// A program from the contract tools' directory.
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("KASSA_TEST_API_TOOLS").expect(
        "KASSA_TEST_API_TOOLS: the HTTP contract tools `scripts/dev up` installs (see `scripts/dev env`)",
    );
    Path::new(&dir).join(name)
}

/// A file of `tests/contract`.
fn contract_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/contract")
        .join(name)
}

/// `kassa run api` on a free loopback port, ready, with a key of each kind.
struct DeployedApi {
    base: String,
    storefront: String,
    admin: String,
    _process: Component,
}

async fn deployed_api() -> DeployedApi {
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.expect("database");
    let name = uuid::Uuid::new_v4().simple().to_string();
    let storefront = create_key(&pool, KeyKind::Storefront, &format!("st-sf-{name}"))
        .await
        .expect("storefront key");
    let admin = create_key(&pool, KeyKind::Admin, &format!("st-admin-{name}"))
        .await
        .expect("admin key");
    let addr = format!("127.0.0.1:{}", free_port());
    let process = Component::start(
        "api",
        &[
            ("KASSA_HTTP_ADDR", addr.as_str()),
            ("KASSA_RATE_CUSTOMER_PER_SECOND", "1000"),
            // schemathesis sends many requests without a key on purpose (the `ignored_auth`
            // check); the per-peer limit on those has its own test (api_hostile).
            ("KASSA_RATE_UNAUTHENTICATED_PER_SECOND", "100000"),
        ],
    );
    let base = format!("http://{addr}");
    wait_until(&reqwest::Client::new(), &base, "/ready", 200, |_| true).await;
    DeployedApi {
        base,
        storefront,
        admin,
        _process: process,
    }
}

/// The SKUs the schemathesis settings draw orders and cart items from (`[dictionaries.catalog]`).
fn catalog_of_the_settings() -> Vec<String> {
    let settings = std::fs::read_to_string(contract_file("schemathesis.toml")).expect("settings");
    let section = settings
        .split("[dictionaries.catalog]")
        .nth(1)
        .expect("a [dictionaries.catalog] section");
    let values = section
        .lines()
        .find_map(|line| line.trim().strip_prefix("values = "))
        .expect("its values");
    serde_json::from_str(values).expect("a list of SKUs")
}

/// What one schemathesis run printed, and whether it passed.
struct Run {
    passed: bool,
    printed: String,
}

impl Run {
    /// How many test cases it generated (from its summary).
    fn cases(&self) -> usize {
        let line = self
            .printed
            .lines()
            .skip_while(|l| !l.starts_with("Test cases:"))
            .nth(1)
            .unwrap_or_default();
        line.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// What failed or erred, and the summary (everything from the first of its failures and
    /// errors sections on), else all of it.
    fn failures(&self) -> &str {
        ["= FAILURES =", "= ERRORS ="]
            .iter()
            .filter_map(|section| self.printed.find(section))
            .min()
            .map_or(self.printed.as_str(), |at| &self.printed[at..])
    }

    /// The summary at its end.
    fn summary(&self) -> &str {
        self.printed
            .find("= SUMMARY =")
            .map_or(self.printed.as_str(), |at| &self.printed[at..])
    }
}

/// schemathesis over the whole document with `key`: all checks, all phases, seed 42.
async fn schemathesis(base: &str, key: &str) -> Run {
    let workdir = std::env::temp_dir().join(format!("kassa-st-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&workdir).expect("work directory");
    let request_timeout = (kassa_api::order_status::MAX_WAIT_SECONDS + 15).to_string();
    // One worker: hypothesis reads its strategies' source with Python's `ast`, which is not safe
    // from several threads at once on CPython 3.11 (a run with two met "AST constructor
    // recursion depth mismatch").
    let output = tokio::process::Command::new(tool("st"))
        .current_dir(&workdir)
        .arg("--config-file")
        .arg(contract_file("schemathesis.toml"))
        .args(["--no-color", "run", &format!("{base}/openapi.json")])
        .args([
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
        ])
        .args(["--seed", "42", "--max-examples", "30", "--workers", "1"])
        // Above the longest a request may be held on purpose (a long poll's `wait`, up to 30 s, on
        // an order that does not change while no processor runs): a generated long poll is an
        // answer to wait for, not a timeout.
        .args(["--request-timeout", &request_timeout])
        .arg("-H")
        .arg(format!("Authorization: Bearer {key}"))
        .output()
        .await
        .expect("run schemathesis");
    let _ = std::fs::remove_dir_all(&workdir);
    Run {
        passed: output.status.success(),
        printed: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[tokio::test]
async fn schemathesis_finds_no_failure_with_a_storefront_key_or_an_admin_key() {
    // Minutes long, and every 5xx is a failure: not beside a test that stops Postgres.
    let _quiet = common::inventory::exclusive().await;
    let api = deployed_api().await;
    let http = reqwest::Client::new();
    for sku in catalog_of_the_settings() {
        let put = http
            .request(Method::PUT, format!("{}/admin/products/{sku}", api.base))
            .bearer_auth(&api.admin)
            .json(&serde_json::json!({"name": sku, "price_minor": 1_500, "currency": "EUR"}))
            .send()
            .await
            .expect("PUT product");
        assert_eq!(put.status(), 200, "catalog: {sku}");
    }
    for (who, key) in [("storefront", &api.storefront), ("admin", &api.admin)] {
        let run = schemathesis(&api.base, key).await;
        println!("schemathesis with the {who} key:\n{}", run.summary());
        assert!(
            run.passed,
            "schemathesis with the {who} key:\n{}",
            run.failures()
        );
        assert!(
            run.cases() >= 1_000,
            "a run that tests little proves little: {} cases\n{}",
            run.cases(),
            run.summary()
        );
    }
}

#[tokio::test]
async fn a_client_generated_from_the_document_places_and_follows_an_order() {
    let saga = common::saga::Saga::new(common::saga::start_processors(&[]).await, None, None).await;
    let sku = saga.sku("GENERATED");
    saga.product(&sku, 1_999, 5).await;

    let workdir = std::env::temp_dir().join(format!("kassa-client-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&workdir).expect("work directory");
    let document = reqwest::get(format!("{}/openapi.json", saga.api.base))
        .await
        .expect("GET /openapi.json")
        .text()
        .await
        .expect("the document");
    let document_file = workdir.join("openapi.json");
    std::fs::write(&document_file, document).expect("write the document");
    let generated = tokio::process::Command::new(tool("openapi-python-client"))
        .current_dir(&workdir)
        .args([
            "generate",
            "--meta",
            "none",
            "--output-path",
            "kassa_client",
            "--path",
        ])
        .arg(&document_file)
        .output()
        .await
        .expect("run openapi-python-client");
    let printed = String::from_utf8_lossy(&generated.stdout).into_owned()
        + &String::from_utf8_lossy(&generated.stderr);
    assert!(generated.status.success(), "generating: {printed}");
    assert!(
        !printed.contains("will not be generated"),
        "every operation is generated: {printed}"
    );

    let customer = format!("cus-{}", saga.run);
    let ran = tokio::process::Command::new(tool("python"))
        .arg(contract_file("generated_client.py"))
        .arg(&workdir)
        .args([&saga.api.base, &saga.api.storefront, &customer, &sku])
        .output()
        .await
        .expect("run the generated client");
    let _ = std::fs::remove_dir_all(&workdir);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "the generated client: {stdout}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("its JSON line");
    println!("through the generated client: {seen}");
    assert_eq!(
        (seen["total_minor"].as_i64(), seen["currency"].as_str()),
        (Some(1_999), Some("EUR"))
    );
    let statuses: Vec<&str> = seen["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(statuses.first(), Some(&"accepted"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"completed"), "{statuses:?}");
    assert!(seen["transitions"].as_u64() >= Some(4), "{seen}");
}
