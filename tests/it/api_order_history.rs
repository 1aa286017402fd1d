//! A customer's order history (`GET /api/orders`) and an order's status pushed as Server-Sent
//! Events (`GET /api/orders/{id}/events`), against the real API, processors and services.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::common::saga::{Saga, start_processors, wait_for};

/// Every order of the page chain from `query`, following `next_cursor`: the ids, newest first,
/// and the number of pages.
async fn all_pages(saga: &Saga, query: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/orders?{query}&cursor={c}"),
            None => format!("/api/orders?{query}"),
        };
        let page = get_json(saga, &path).await;
        pages += 1;
        let orders = page["orders"].as_array().unwrap();
        ids.extend(
            orders
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (ids, pages),
        }
        assert!(pages < 100, "the pages end");
    }
}

async fn get_json(saga: &Saga, path: &str) -> Value {
    let response = saga
        .api
        .as_storefront(Method::GET, path)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_pages_through_120_orders_once_newest_first_and_no_one_else_sees_them() {
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let sku = saga.sku("HIST");
    saga.product(&sku, 500, 1_000).await;
    let customer = format!("cus_{}_history", saga.run);
    let mut placed = Vec::new();
    for _ in 0..120 {
        placed.push(
            saga.place_for(&customer, "pm_card_visa", &[(&sku, 1)])
                .await,
        );
    }
    let query = format!("customer_id={customer}&limit=50");

    // The first page, then an order placed meanwhile, then the rest: every order of the 120 once.
    let first = get_json(&saga, &format!("/api/orders?{query}")).await;
    let newest: Vec<&str> = first["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(newest.len(), 50);
    let expected_newest: Vec<&str> = placed.iter().rev().take(50).map(String::as_str).collect();
    assert_eq!(newest, expected_newest, "newest first");
    let late = saga
        .place_for(&customer, "pm_card_visa", &[(&sku, 1)])
        .await;
    let mut ids: Vec<String> = newest.iter().map(|s| (*s).to_owned()).collect();
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let mut pages = 1;
    loop {
        let page = get_json(&saga, &format!("/api/orders?{query}&cursor={cursor}")).await;
        pages += 1;
        ids.extend(
            page["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3, "50 + 50 + 20");
    let expected: Vec<String> = placed.iter().rev().cloned().collect();
    assert_eq!(
        ids, expected,
        "each of the 120 once, newest first; the late one not among them"
    );
    assert!(!ids.contains(&late));

    // Each with its status now: once all are completed, the filter finds all 121.
    wait_for(
        Duration::from_secs(120),
        "all 121 orders completed",
        || async {
            all_pages(
                &saga,
                &format!("customer_id={customer}&limit=100&status=completed"),
            )
            .await
            .0
            .len()
                == 121
        },
    )
    .await;
    let (pending, _) = all_pages(&saga, &format!("customer_id={customer}&status=pending")).await;
    assert!(pending.is_empty());
    let one = &get_json(
        &saga,
        &format!("/api/orders?customer_id={customer}&limit=1"),
    )
    .await["orders"][0];
    assert_eq!(one["order_id"], late.as_str());
    assert_eq!(one["status"], "completed");
    assert_eq!(one["total_minor"], 500);

    // Another customer sees none of them; nor does another storefront's key.
    let other = get_json(
        &saga,
        &format!("/api/orders?customer_id=cus_{}_other", saga.run),
    )
    .await;
    assert_eq!(other["orders"], serde_json::json!([]));
    let stranger = kassa_api::auth::create_key(
        saga.pool(),
        kassa_api::auth::KeyKind::Storefront,
        &format!("another-shop-{}", saga.run),
    )
    .await
    .unwrap();
    let theirs: Value = saga
        .api
        .request(
            Method::GET,
            &format!("/api/orders?customer_id={customer}"),
            &stranger,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["orders"], serde_json::json!([]));

    // Bad input is named.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=nonsense", "cursor"),
        ("status=Completed", "status"),
    ] {
        let response = saga
            .api
            .as_storefront(
                Method::GET,
                &format!("/api/orders?customer_id={customer}&{query}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert!(problem.to_string().contains(field), "{query}: {problem}");
    }
    let unnamed = saga
        .api
        .as_storefront(Method::GET, "/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(unnamed.status(), 400, "a customer must be named");
    let malformed = saga
        .api
        .as_storefront(Method::GET, "/api/orders?customer_id=not%20one")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: usize,
    event: String,
    data: Value,
}

/// Reads events from `response` until `enough` says so or the stream ends (then None).
async fn read_events(
    response: &mut reqwest::Response,
    buffer: &mut String,
    enough: impl Fn(&[Sse]) -> bool,
) -> (Vec<Sse>, bool) {
    let mut events = Vec::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if let Some(id) = id {
                events.push(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
                if enough(&events) {
                    return (events, false);
                }
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("an event or the end within 30 s")
            .unwrap();
        match chunk {
            Some(bytes) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            None => return (events, true),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_client_sees_every_transition_of_an_order_and_resumes_after_a_dropped_connection() {
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let sku = saga.sku("SSE");
    saga.product(&sku, 700, 5).await;
    // 3-D Secure holds the order in action_required until the customer cancels it.
    let order = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 1)])
        .await;
    let path = format!("/api/orders/{}/events", order.id);
    let open = |last: Option<usize>| {
        let mut request = saga
            .api
            .as_storefront(Method::GET, &path)
            .header("X-Customer-Id", &order.customer);
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last.to_string());
        }
        request.send()
    };

    let mut first = open(None).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(
        first.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buffer = String::new();
    let (seen, ended) = read_events(&mut first, &mut buffer, |events| {
        events
            .last()
            .is_some_and(|e| e.data["status"] == "action_required")
    })
    .await;
    assert!(!ended);
    assert_eq!(seen[0].id, 0);
    assert_eq!(seen[0].data["status"], "accepted");
    assert!(seen.iter().all(|e| e.event == "status"));
    let last_seen = seen.last().unwrap().id;
    drop(first); // the connection drops

    // While nobody listens, the customer cancels; the client comes back and gets what it missed.
    saga.cancel(&order).await;
    let mut second = open(Some(last_seen)).await.unwrap();
    assert_eq!(second.status(), 200);
    let mut buffer = String::new();
    let (missed, ended) = read_events(&mut second, &mut buffer, |_| false).await;
    assert!(ended, "the stream ends after the final status");
    let ids: Vec<usize> = seen.iter().chain(&missed).map(|e| e.id).collect();
    assert_eq!(
        ids,
        (0..ids.len()).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let last = missed.last().expect("the cancellation");
    assert_eq!(last.data["status"], "cancelled");
    assert_eq!(last.data["last"], true);

    // They are the order's transitions as GET /api/orders/{id} lists them.
    let body = saga.get(&order, "").await;
    let transitions: Vec<String> = body["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap_or_default().to_owned())
        .collect();
    let streamed: Vec<String> = seen
        .iter()
        .chain(&missed)
        .skip(1)
        .map(|e| e.data["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(streamed, transitions);

    // A client that has everything of a decided order is told not to come back.
    let done = open(Some(*ids.last().unwrap())).await.unwrap();
    assert_eq!(done.status(), 204);

    // Live: a second order's stream hears the cancellation as it commits.
    let live = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 1)])
        .await;
    let live_path = format!("/api/orders/{}/events", live.id);
    let mut stream = saga
        .api
        .as_storefront(Method::GET, &live_path)
        .header("X-Customer-Id", &live.customer)
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    read_events(&mut stream, &mut buffer, |events| {
        events
            .last()
            .is_some_and(|e| e.data["status"] == "action_required")
    })
    .await;
    saga.cancel(&live).await;
    let (after, _) = read_events(&mut stream, &mut buffer, |events| {
        events.last().is_some_and(|e| e.data["last"] == true)
    })
    .await;
    assert_eq!(after.last().unwrap().data["status"], "cancelled");
    let seen: HashSet<usize> = after.iter().map(|e| e.id).collect();
    assert_eq!(seen.len(), after.len());

    let other = saga
        .api
        .as_storefront(Method::GET, &live_path)
        .header("X-Customer-Id", "someone_else")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "another customer's order is not found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_last_event_id_is_refused() {
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let sku = saga.sku("SSEBAD");
    saga.product(&sku, 700, 5).await;
    let order = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    let response = saga
        .api
        .as_storefront(Method::GET, &format!("/api/orders/{}/events", order.id))
        .header("X-Customer-Id", &order.customer)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}
