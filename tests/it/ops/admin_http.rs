//! The operator's views over HTTP (admin keys): order search pages through a customer's orders
//! without skipping or repeating one, filters by state and SKU; an order's story, lag and the
//! books answer what `kassa order|lag|reconcile` print; dead letters are listed, redriven once
//! (a second redrive is 409) and discarded, on the record with the admin key's name.

use super::*;

use common::saga::Placed;
use reqwest::Method;
use std::collections::HashSet;

/// `GET path` as the saga's admin: the status and the JSON answer.
async fn get(saga: &Saga, path: &str) -> (u16, Value) {
    let response = saga.api.as_admin(Method::GET, path).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST path` with a reason as the saga's admin: the status and the JSON answer.
async fn post(saga: &Saga, path: &str, reason: &str) -> (u16, Value) {
    let response = saga
        .api
        .as_admin(Method::POST, path)
        .json(&serde_json::json!({ "reason": reason }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `GET /admin/dlq` with `query` lists dead letters keyed `key`, `count` of them.
async fn listed_keyed(saga: &Saga, query: &str, key: &str, count: usize) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let (status, answer) = get(saga, &format!("/admin/dlq?{query}")).await;
        assert_eq!(status, 200, "{answer}");
        let found: Vec<Value> = answer["dead_letters"]
            .as_array()
            .expect("a list")
            .iter()
            .filter(|d| d["record"]["key"] == key)
            .cloned()
            .collect();
        if found.len() >= count {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{count} dead letter(s) keyed {key} within 90 s: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await; // poll the list until the deadline
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operators_views_over_http_answer_what_the_commands_print() {
    let _serial = SERIAL.lock().await;
    let saga = Saga::new(start_processors(ENV).await, None, None).await;
    let since = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let since_query = since.replace('+', "%2B");
    let sku = saga.sku("HTTP");
    saga.product(&sku, 700, 2).await;

    // Three orders of one customer, one unit each of a SKU with two: two complete, one is
    // rejected.
    let customer = format!("cus_{}_http", saga.run);
    let mut placed = Vec::new();
    for _ in 0..3 {
        let id = saga
            .place_for(&customer, "pm_card_visa", &[(&sku, 1)])
            .await;
        placed.push(Placed {
            id,
            customer: customer.clone(),
        });
    }
    let mut states = Vec::new();
    for order in &placed {
        let decided = wait_for_decision(&saga, order).await;
        states.push(decided);
    }
    states.sort();
    assert_eq!(states, ["completed", "completed", "rejected"]);

    // Search: two pages of two and one, newest first, none skipped or repeated.
    let (status, first) = get(&saga, &format!("/admin/orders?customer={customer}&limit=2")).await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = get(
        &saga,
        &format!("/admin/orders?customer={customer}&limit=2&cursor={cursor}"),
    )
    .await;
    assert!(second["next_cursor"].is_null(), "{second}");
    let pages: Vec<&Value> = first["orders"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["orders"].as_array().unwrap())
        .collect();
    let listed: Vec<&str> = pages
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    let mut newest_first: Vec<&str> = placed.iter().rev().map(|o| o.id.as_str()).collect();
    assert_eq!(listed, newest_first, "every order once, newest first");
    assert!(pages.iter().all(|o| o["skus"] == serde_json::json!([sku])));
    let (_, rejected) = get(
        &saga,
        &format!("/admin/orders?customer={customer}&state=rejected"),
    )
    .await;
    let rejected = rejected["orders"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let (_, by_sku) = get(
        &saga,
        &format!("/admin/orders?sku={sku}&since={since_query}"),
    )
    .await;
    newest_first.sort();
    let mut of_sku: Vec<&str> = by_sku["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    of_sku.sort();
    assert_eq!(of_sku, newest_first, "the SKU's orders");
    let (status, bad) = get(&saga, "/admin/orders?state=lost&limit=0").await;
    assert_eq!(
        (status, bad["code"].as_str()),
        (400, Some("validation_failed"))
    );
    let unauthorised = saga
        .api
        .as_storefront(Method::GET, "/admin/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(
        unauthorised.status(),
        401,
        "a storefront key is no admin key"
    );

    // The story: what `kassa order --json` prints, with the order's events on Kafka.
    let rejected_id = rejected[0]["order_id"].as_str().unwrap();
    let (status, story) = get(&saga, &format!("/admin/orders/{rejected_id}")).await;
    assert_eq!(status, 200, "{story}");
    let (code, printed, err) = kassa(&["order", rejected_id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let printed: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(story["state"], "rejected");
    assert_eq!(story["entries"], printed["entries"]);
    assert!(
        story["diagnosis"].as_str().unwrap().starts_with("rejected"),
        "{story}"
    );
    assert!(
        story["entries"].as_array().unwrap().iter().any(
            |e| e["source"] == "kafka" && e["what"].as_str().unwrap().contains("OrderRejected")
        ),
        "{story}"
    );
    let (status, _) = get(&saga, "/admin/orders/no-such-order").await;
    assert_eq!(status, 404);

    // Lag and the books: the same as the commands.
    let (status, lag) = get(&saga, "/admin/lag?max_lag=1000000000").await;
    assert_eq!(status, 200, "{lag}");
    let groups: HashSet<&str> = lag["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        kassa_processors::ConsumerGroup::ALL
            .map(|g| g.name())
            .into_iter()
            .collect::<HashSet<_>>()
    );
    assert_eq!(lag["breaches"], serde_json::json!([]));
    let (status, books) = get(&saga, &format!("/admin/reconcile?since={since_query}")).await;
    assert_eq!(status, 200, "{books}");
    let (_, printed, _) = kassa(&["reconcile", "--json", "--since", &since]).await;
    let printed: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(books["discrepancies"], printed);
    assert_eq!(books["square"], printed == serde_json::json!([]));

    // A dead letter: listed, shown, redriven once (past the inbox: it is declared invalid
    // again, a second dead letter of the same event), then both discarded on the record.
    let feed = common::inventory::Feed::new(&saga.api.settings);
    let wrong_key = format!("not-{sku}");
    feed.send(
        &wrong_key,
        &common::inventory::reserve("o-http", 0, &sku, 1),
    )
    .await;
    let query = format!("group=inventory&since={since_query}");
    let first = listed_keyed(&saga, &query, &wrong_key, 1).await.remove(0);
    let id = first["id"].as_str().unwrap().to_owned();
    let (status, shown) = get(&saga, &format!("/admin/dlq/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        shown["record"]["event"]["event_id"],
        first["record"]["event"]["event_id"]
    );
    let (status, redriven) = post(&saga, &format!("/admin/dlq/{id}/redrive"), "handled anew").await;
    assert_eq!(status, 200, "{redriven}");
    assert!(
        redriven["topic"]
            .as_str()
            .unwrap()
            .ends_with("checkout.requests"),
        "published again where it came from: {redriven}"
    );
    let (status, again) = post(&saga, &format!("/admin/dlq/{id}/redrive"), "again").await;
    assert_eq!(
        (status, again["code"].as_str()),
        (409, Some("conflict")),
        "{again}"
    );
    let both = listed_keyed(&saga, &query, &wrong_key, 2).await;
    assert_eq!(
        both[1]["record"]["event"]["event_id"],
        first["record"]["event"]["event_id"]
    );
    for letter in &both {
        let id = letter["id"].as_str().unwrap();
        let (status, done) =
            post(&saga, &format!("/admin/dlq/{id}/discard"), "producer fixed").await;
        assert_eq!(status, 200, "{done}");
    }
    let (_, listed) = get(&saga, &format!("/admin/dlq?{query}")).await;
    assert!(
        listed["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["record"]["key"] != wrong_key.as_str()),
        "discarded ones are not listed: {listed}"
    );
    let actors: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT action, outcome, actor FROM ops.dead_letter_actions WHERE dead_letter = $1 ORDER BY id",
    )
    .bind(&id)
    .fetch_all(saga.pool())
    .await
    .unwrap();
    let key_name = format!("admin key {}", saga.api.admin_name);
    assert_eq!(
        actors,
        [
            ("redrive".into(), "published".into(), key_name.clone()),
            (
                "redrive".into(),
                "refused: already redriven".into(),
                key_name.clone()
            ),
            ("discard".into(), "discarded".into(), key_name),
        ]
    );
    let (status, _) = get(&saga, "/admin/dlq/inventory/0/999999999").await;
    assert_eq!(status, 404);

    // A foreign producer's record, on a partition its key does not hash to: redriven, the copy
    // goes back to that partition (not where kassa's partitioner would put the key).
    let key = format!("garbage-{sku}");
    let partitions = saga.api.settings.topics.partitions as u32;
    let elsewhere =
        (kassa_schemas::kafka::java_partition(key.as_bytes(), partitions) + 1) % partitions;
    let producer = kassa::kafka::producer(&saga.api.settings).unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(kassa_schemas::Topic::CheckoutRequests.name())
                .partition(elsewhere as i32)
                .key(&key)
                .payload("not an event"),
            Duration::from_secs(10),
        )
        .await
        .expect("Kafka takes the record");
    let origin = |letter: &Value| -> String {
        letter["record"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "kassa.dlq.partition")
            .map(|h| h[1].as_str().unwrap().to_owned())
            .unwrap()
    };
    let garbage = listed_keyed(&saga, &query, &key, 1).await.remove(0);
    assert_eq!(origin(&garbage), elsewhere.to_string());
    let id = garbage["id"].as_str().unwrap();
    let (status, _) = post(
        &saga,
        &format!("/admin/dlq/{id}/redrive"),
        "partition check",
    )
    .await;
    assert_eq!(status, 200);
    let again = listed_keyed(&saga, &query, &key, 2).await;
    assert_eq!(
        origin(&again[1]),
        elsewhere.to_string(),
        "redriven to its own partition"
    );
}

/// Waits until `order` is completed or rejected; returns which.
async fn wait_for_decision(saga: &Saga, order: &Placed) -> String {
    let started = std::time::Instant::now();
    loop {
        let status = saga.get(order, "?wait=5").await["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "completed" || status == "rejected" {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} decided within 60 s (is {status})",
            order.id
        );
    }
}
