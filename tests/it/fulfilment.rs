//! Orders carry what fulfilment needs: a shipping address and a contact email given with the
//! order travel through the saga into `OrderCompleted`, which a client that is not kassa's reads;
//! bad ones are refused field by field; and the evolved schemas read old records and are read by
//! old readers.

use crate::common;

use std::time::Duration;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use kassa_schemas::Topic;
use kassa_schemas::events::orders::{OrderCompleted, OrderEvent};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::saga::{Saga, start_processors};

fn fulfilment() -> Value {
    json!({
        "email": "ada@shop.example",
        "shipping_address": {
            "name": "Ada Lovelace",
            "lines": ["Kassa Street 1", "Floor 2"],
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
            "phone": "+49 30 1234567"
        },
        "billing_address": {
            "name": "Ada's Accounts",
            "lines": ["Ledger Lane 9"],
            "city": "London",
            "postal_code": "EC1A 1BB",
            "region": "Greater London",
            "country": "GB"
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_given_with_an_order_reaches_the_warehouse_in_order_completed() {
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let sku = saga.sku("SHIP");
    saga.product(&sku, 2500, 3).await;
    let customer = format!("cus_{}_ship", saga.run);
    let placed = saga
        .api
        .as_storefront(Method::POST, "/api/orders")
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({
            "customer_id": customer,
            "payment_method_id": "pm_card_visa",
            "lines": [{"sku": sku, "quantity": 1}],
            "fulfilment": fulfilment(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let body: Value = placed.json().await.unwrap();
    assert_eq!(
        body["fulfilment"],
        fulfilment(),
        "the 202 shows what was taken"
    );
    let order = common::saga::Placed {
        id: body["order_id"].as_str().unwrap().to_owned(),
        customer,
    };
    let done = saga
        .wait_status(&order, "completed", Duration::from_secs(60))
        .await;
    assert_eq!(done["fulfilment"], fulfilment());

    // The warehouse's view: OrderCompleted as confluent-kafka's Avro deserializer reads it.
    let options = kassa::tail::Options {
        topics: vec![Topic::OrdersEvents.name().to_owned()],
        start: kassa::tail::Start::Time(since),
        key: Some(order.id.clone()),
        order: None,
        event_type: Some("OrderCompleted".into()),
        follow: false,
        limit: Some(1),
        partition: None,
        until: None,
    };
    let mut places = Vec::new();
    kassa::tail::tail(&saga.api.settings, &options, |r| {
        places.push(common::foreign::place(&r.topic, r.partition, r.offset));
    })
    .await
    .unwrap();
    assert_eq!(places.len(), 1, "one OrderCompleted");
    let read = common::foreign::read(&saga.api.settings, &places, false).await;
    let completed = &read[0]["value"]["payload"]["OrderCompleted"];
    let shipping = &completed["fulfilment"]["shipping"];
    assert_eq!(shipping["name"], "Ada Lovelace");
    assert_eq!(shipping["lines"], json!(["Kassa Street 1", "Floor 2"]));
    assert_eq!(shipping["country"], "DE");
    assert_eq!(shipping["region"], Value::Null);
    assert_eq!(
        completed["fulfilment"]["billing"]["region"],
        "Greater London"
    );
    assert_eq!(completed["fulfilment"]["email"], "ada@shop.example");

    // An order without one completes as before, its OrderCompleted saying none was given.
    let plain = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    let plain_done = saga
        .wait_status(&plain, "completed", Duration::from_secs(60))
        .await;
    assert!(plain_done.get("fulfilment").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_address_is_refused_field_by_field_before_anything_is_stored() {
    let api = common::api::start(|_| {}).await;
    let mut bad = fulfilment();
    bad["email"] = json!("ada@localhost");
    bad["shipping_address"]["country"] = json!("XX");
    bad["shipping_address"]["lines"] = json!([]);
    bad["billing_address"]["phone"] = json!("call me maybe");
    let response = api
        .as_storefront(Method::POST, "/api/orders")
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({
            "customer_id": "cus_bad_address",
            "payment_method_id": "pm_card_visa",
            "lines": [{"sku": "TEE-BLK-M", "quantity": 1}],
            "fulfilment": bad,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "fulfilment.email",
            "fulfilment.shipping_address.lines",
            "fulfilment.shipping_address.country",
            "fulfilment.billing_address.phone",
        ],
        "{problem}"
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api.orders WHERE customer_id = 'cus_bad_address'")
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
}

/// `orders.events`' schema as it was before `fulfilment` was added to `OrderCompleted` (and,
/// later, the storefront and contact to `OrderReserved` and `OrderRejected`).
fn before_fulfilment() -> String {
    let mut schema: Value = serde_json::from_str(Topic::OrdersEvents.schema_json()).unwrap();
    let branches = schema["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "payload")
        .unwrap()["type"]
        .as_array_mut()
        .unwrap();
    let mut taken = 0;
    for branch in branches.iter_mut() {
        let rejected = branch["name"] == "OrderRejected";
        let fields = branch["fields"].as_array_mut().unwrap();
        let before = fields.len();
        fields.retain(|f| {
            !(f["name"] == "fulfilment"
                || f["name"] == "storefront"
                || (rejected && f["name"] == "customer_id"))
        });
        taken += before - fields.len();
    }
    assert_eq!(taken, 6, "the fields were there to take away");
    schema.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn old_readers_read_the_new_order_completed_and_the_new_reader_reads_old_ones() {
    let settings = common::setup().await;
    let old_text = before_fulfilment();
    let old = Schema::parse_str(&old_text).unwrap();

    // The registry, holding the old version under kassa's compatibility level, takes the new one.
    let http = reqwest::Client::new();
    let base = settings.schema_registry_url.trim_end_matches('/');
    let subject = format!(
        "{}fulfilment-compat-{}-value",
        kassa_schemas::topics::namespace(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let config = http
        .put(format!("{base}/config/{subject}"))
        .json(&json!({"compatibility": "BACKWARD_TRANSITIVE"}))
        .send()
        .await
        .unwrap();
    assert!(config.status().is_success(), "{}", config.status());
    let registered = http
        .post(format!("{base}/subjects/{subject}/versions"))
        .json(&json!({"schema": old_text}))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{}", registered.status());
    let verdict: Value = http
        .post(format!(
            "{base}/compatibility/subjects/{subject}/versions/latest"
        ))
        .json(&json!({"schema": Topic::OrdersEvents.schema_json()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verdict["is_compatible"], true, "{verdict}");

    let with_address = kassa_schemas::Envelope::new(
        "o-1",
        None,
        OrderEvent::from(OrderCompleted {
            order_id: "o-1".into(),
            customer_id: "cus_1".into(),
            lines: vec![],
            total_minor: 100,
            currency: "EUR".into(),
            fulfilment: Some(Box::new(kassa_schemas::events::samples::fulfilment())),
        }),
    );
    let codec = kassa_schemas::Codec::new(&settings.schema_registry_url).unwrap();
    let framed = codec.encode(&with_address).await.unwrap();
    let written = &framed[5..]; // the Avro body after the magic byte and schema id
    // An old consumer (fastavro with the old version as its reader) reads the new record,
    // and an old producer writes what it read with that version.
    let (read, rewritten) = old_reader(Topic::OrdersEvents.schema_json(), &old_text, written).await;
    let completed = &read["payload"]["OrderCompleted"];
    assert_eq!(completed["order_id"], "o-1", "{read}");
    assert!(
        completed.get("fulfilment").is_none(),
        "the old reader sees no address: {read}"
    );

    // The new reader (kassa's codec) reads what the old producer wrote: no address.
    let value = GenericDatumReader::builder(&old)
        .build()
        .unwrap()
        .read_value(&mut &rewritten[..])
        .unwrap();
    let back: kassa_schemas::Envelope<OrderEvent> =
        kassa_schemas::codec::decode_value(&old, &value).unwrap();
    let OrderEvent::OrderCompleted(completed) = back.payload else {
        panic!("an OrderCompleted: {:?}", back.payload)
    };
    assert_eq!(
        (completed.order_id.as_str(), completed.fulfilment),
        ("o-1", None)
    );
}

/// `tests/old_reader.py`: fastavro reads `datum` (written with `writer`) with `reader`, and
/// writes what it read with `reader`; the record as read, and the rewritten body.
async fn old_reader(writer: &str, reader: &str, datum: &[u8]) -> (Value, Vec<u8>) {
    let python = std::env::var("KASSA_TEST_PYTHON")
        .expect("KASSA_TEST_PYTHON: the Python with fastavro that `scripts/dev up` installs");
    let mut child = tokio::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/old_reader.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let hex: String = datum.iter().map(|b| format!("{b:02x}")).collect();
    let request = json!({"writer": writer, "reader": reader, "datum": hex});
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(request.to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "old_reader.py failed");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rewritten = answer["rewritten"].as_str().unwrap();
    let bytes = (0..rewritten.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&rewritten[i..i + 2], 16).unwrap())
        .collect();
    (answer["read"].clone(), bytes)
}
