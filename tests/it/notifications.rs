//! Notifications: a storefront's webhook endpoints hear of its orders' confirmation and
//! completion, signed, each notice acknowledged once, through a receiver that fails its first
//! three attempts and one that does not answer in time; every attempt is listed and a delivery can
//! be sent again; and the customer's email lands in the SMTP sink for each notified event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::saga::{Placed, Saga, start_processors, wait_for};

/// One request a receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    event_id: String,
    body: Vec<u8>,
    answered: u16,
}

/// How a receiver behaves: the first `fail` requests are answered 500, the first `stall` are
/// held past kassa's time limit (2 s in the test settings) before being answered.
#[derive(Default)]
struct Behaviour {
    fail: usize,
    stall: usize,
    seen: usize,
    received: Vec<Received>,
}

/// A webhook receiver on loopback.
struct Receiver {
    url: String,
    state: Arc<Mutex<Behaviour>>,
}

impl Receiver {
    async fn start(fail: usize, stall: usize) -> Self {
        let state = Arc::new(Mutex::new(Behaviour {
            fail,
            stall,
            ..Behaviour::default()
        }));
        let app = axum::Router::new()
            .route("/hooks", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The bodies acknowledged (answered 2xx), parsed.
    fn acknowledged(&self) -> Vec<Value> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<Mutex<Behaviour>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let (stall, answer) = {
        let mut s = state.lock().unwrap();
        s.seen += 1;
        let answer = if s.seen <= s.fail {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        (s.seen <= s.stall, answer)
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    // Recorded as it arrives (a held one as answered 0: kassa has given up on it by then).
    state.lock().unwrap().received.push(Received {
        signature: header("kassa-signature"),
        event_id: header("kassa-event-id"),
        body: body.to_vec(),
        answered: if stall { 0 } else { answer.as_u16() },
    });
    if stall {
        // Longer than kassa waits (KASSA_NOTIFY_TIMEOUT_SECONDS=2).
        tokio::time::sleep(Duration::from_secs(4)).await; // the slow endpoint is the test's input, not a wait for a condition
    }
    answer
}

/// Registers an endpoint for the test's storefront; returns its id and secret.
async fn register(saga: &Saga, url: &str, events: &[&str]) -> (String, String) {
    let response = saga
        .api
        .as_admin(Method::POST, "/admin/webhooks")
        .json(&json!({"storefront": saga.api.storefront_name, "url": url, "events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let endpoint: Value = response.json().await.unwrap();
    (
        endpoint["id"].as_str().unwrap().to_owned(),
        endpoint["secret"].as_str().unwrap().to_owned(),
    )
}

async fn admin_get(saga: &Saga, path: &str) -> Value {
    let response = saga.api.as_admin(Method::GET, path).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// Places a `pm_card_visa` (or `payment_method`) order of one unit of `sku` with a contact
/// email; returns it once accepted.
async fn place_with_email(saga: &Saga, sku: &str, payment_method: &str, email: &str) -> Placed {
    let customer = format!("cus_{}_{}", saga.run, uuid::Uuid::new_v4().simple());
    let response = saga
        .api
        .as_storefront(Method::POST, "/api/orders")
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({
            "customer_id": customer,
            "payment_method_id": payment_method,
            "lines": [{"sku": sku, "quantity": 1}],
            "fulfilment": {
                "email": email,
                "shipping_address": {"name": "Ada Lovelace", "lines": ["Kassa Street 1"],
                                     "city": "Berlin", "postal_code": "10115", "country": "DE"}
            }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    Placed {
        id: body["order_id"].as_str().unwrap().to_owned(),
        customer,
    }
}

/// The types of the notices about `order` a receiver acknowledged, and how often each.
fn acknowledged_for(receiver: &Receiver, order: &str) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = receiver
        .acknowledged()
        .iter()
        .filter(|b| b["order_id"] == order)
        .map(|b| {
            (
                b["type"].as_str().unwrap().to_owned(),
                b["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storefront_webhook_hears_of_confirmed_and_completed_signed_once_through_failures_and_a_timeout()
 {
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let sku = saga.sku("HOOK");
    saga.product(&sku, 1500, 10).await;
    let flaky = Receiver::start(3, 0).await;
    let slow = Receiver::start(0, 1).await;
    let events = ["order.confirmed", "order.completed"];
    let (flaky_id, flaky_secret) = register(&saga, &flaky.url, &events).await;
    let (slow_id, slow_secret) = register(&saga, &slow.url, &events).await;

    let order = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    saga.wait_status(&order, "completed", Duration::from_secs(60))
        .await;
    for receiver in [&flaky, &slow] {
        wait_for(
            Duration::from_secs(60),
            "both notices acknowledged by each receiver",
            || async { acknowledged_for(receiver, &order.id).len() >= 2 },
        )
        .await;
    }

    // Signed like Stripe's, with the endpoint's own secret; the header's event id is the body's.
    let now = chrono::Utc::now().timestamp();
    for (receiver, secret) in [(&flaky, &flaky_secret), (&slow, &slow_secret)] {
        for r in receiver.received() {
            kassa_api::webhooks::verify(secret, &r.signature, &r.body, now)
                .unwrap_or_else(|e| panic!("a delivery signed with its endpoint's secret: {e:?}"));
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["id"], r.event_id.as_str());
        }
        let other = if secret == &flaky_secret {
            &slow_secret
        } else {
            &flaky_secret
        };
        let first = &receiver.received()[0];
        assert!(kassa_api::webhooks::verify(other, &first.signature, &first.body, now).is_err());
    }

    // Each notice acknowledged once by each receiver, with the same id at both (what a receiver
    // deduplicates on), whatever came before.
    let flaky_seen = acknowledged_for(&flaky, &order.id);
    let slow_seen = acknowledged_for(&slow, &order.id);
    let types: Vec<&str> = flaky_seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["order.completed", "order.confirmed"]);
    assert_eq!(
        flaky_seen, slow_seen,
        "one notice id per event, the same at every endpoint"
    );
    let received = flaky.received();
    let failed: Vec<&Received> = received.iter().filter(|r| r.answered == 500).collect();
    assert_eq!(failed.len(), 3, "the first three attempts failed");
    assert!(
        failed
            .iter()
            .all(|r| flaky_seen.iter().any(|(_, id)| *id == r.event_id)),
        "a retry carries the id of the notice it retries"
    );

    // Every attempt is recorded: the flaky endpoint's three 500s and its two successes, the slow
    // one's time-out.
    let listed = admin_get(&saga, &format!("/admin/webhooks/{flaky_id}/deliveries")).await;
    let deliveries = listed["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{listed}");
    assert!(deliveries.iter().all(|d| d["state"] == "delivered"));
    let statuses: Vec<i64> = deliveries
        .iter()
        .flat_map(|d| d["attempt_log"].as_array().unwrap())
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        3,
        "{listed}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{listed}"
    );
    let listed = admin_get(&saga, &format!("/admin/webhooks/{slow_id}/deliveries")).await;
    let errors: Vec<&str> = listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["attempt_log"].as_array().unwrap())
        .filter_map(|a| a["error"].as_str())
        .collect();
    assert_eq!(errors, ["no answer within 2s"], "{listed}");

    // Acknowledged means done: a later order's notices come and go, and this order's are not
    // sent again.
    let before = (flaky.received().len(), slow.received().len());
    let later = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    saga.wait_status(&later, "completed", Duration::from_secs(60))
        .await;
    wait_for(
        Duration::from_secs(60),
        "the later order's notices acknowledged",
        || async {
            acknowledged_for(&flaky, &later.id).len() == 2
                && acknowledged_for(&slow, &later.id).len() == 2
        },
    )
    .await;
    assert_eq!(acknowledged_for(&flaky, &order.id), flaky_seen);
    assert_eq!(
        (flaky.received().len(), slow.received().len()),
        (before.0 + 2, before.1 + 2),
        "only the later order's two notices, once each"
    );

    // An operator sends one again: the same notice id arrives once more.
    let confirmed = deliveries
        .iter()
        .find(|d| d["event_type"] == "order.confirmed")
        .unwrap();
    let resent = saga
        .api
        .as_admin(
            Method::POST,
            &format!(
                "/admin/webhooks/{flaky_id}/deliveries/{}/resend",
                confirmed["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resent.status(), 202);
    let notice_id = confirmed["notification_id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(30), "the resent notice arrives", || {
        let id = notice_id.clone();
        let flaky = &flaky;
        async move {
            flaky
                .received()
                .iter()
                .filter(|r| r.answered == 200 && r.event_id == id)
                .count()
                == 2
        }
    })
    .await;

    // A disabled endpoint hears of nothing new; another storefront's orders never reach it.
    let disabled = saga
        .api
        .as_admin(Method::POST, &format!("/admin/webhooks/{slow_id}/disable"))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    let listed = admin_get(
        &saga,
        &format!("/admin/webhooks?storefront={}", saga.api.storefront_name),
    )
    .await;
    let endpoints = listed["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert!(
        endpoints.iter().all(|e| e.get("secret").is_none()),
        "secrets are shown once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_endpoint_registration_is_refused_by_field() {
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    for (body, field) in [
        (
            json!({"storefront": "s", "url": "ftp://x.example/", "events": ["order.completed"]}),
            "url",
        ),
        (
            json!({"storefront": "s", "url": "https://x.example/", "events": ["order.shipped"]}),
            "events",
        ),
        (
            json!({"storefront": "s", "url": "https://x.example/", "events": ["order.completed"], "secret": "short"}),
            "secret",
        ),
    ] {
        let response = saga
            .api
            .as_admin(Method::POST, "/admin/webhooks")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert!(problem.to_string().contains(field), "{problem}");
    }
    let as_storefront = saga
        .api
        .as_storefront(Method::GET, "/admin/webhooks")
        .send()
        .await
        .unwrap();
    assert_eq!(
        as_storefront.status(),
        401,
        "a storefront key is not an admin's"
    );
}

/// `text` decoded from quoted-printable (RFC 2045 6.7): soft line breaks joined, `=XX` bytes
/// decoded; how a mail reader shows a body lettre encoded so.
fn quoted_printable(text: &str) -> String {
    let joined = text.replace("=\n", "");
    let mut bytes = Vec::new();
    let mut rest = joined.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail.get(..2).and_then(|h| std::str::from_utf8(h).ok())) {
            (b'=', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                bytes.push(u8::from_str_radix(hex, 16).unwrap());
                rest = &tail[2..];
            }
            _ => {
                bytes.push(b);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The mails in the SMTP sink's maildir to `to`: (subject, body).
fn mails_to(to: &str) -> Vec<(String, String)> {
    let maildir =
        std::env::var("KASSA_TEST_MAILDIR").expect("KASSA_TEST_MAILDIR (scripts/dev env --test)");
    let Ok(entries) = std::fs::read_dir(std::path::Path::new(&maildir).join("new")) else {
        return Vec::new();
    };
    let mut mails = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let (head, body) = text
            .split_once("\n\n")
            .or_else(|| text.split_once("\r\n\r\n"))
            .unwrap_or((&text, ""));
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        if header("To:") == to {
            mails.push((
                header("Subject:"),
                quoted_printable(&body.replace("\r\n", "\n")),
            ));
        }
    }
    mails.sort();
    mails
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_lands_in_the_smtp_sink_for_each_notified_event() {
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let sku = saga.sku("MAIL");
    saga.product(&sku, 4998, 1).await;
    let email = format!("ada-{}@shop.example", saga.run.to_lowercase());

    // Completed: confirmed, then complete. Then the SKU is sold out: rejected. Then a declined
    // card (after more stock): cancelled.
    let completed = place_with_email(&saga, &sku, "pm_card_visa", &email).await;
    saga.wait_status(&completed, "completed", Duration::from_secs(60))
        .await;
    let rejected = place_with_email(&saga, &sku, "pm_card_visa", &email).await;
    saga.wait_status(&rejected, "rejected", Duration::from_secs(60))
        .await;
    let other = saga.sku("MAIL2");
    saga.product(&other, 1000, 5).await;
    let cancelled = place_with_email(&saga, &other, "pm_card_chargeDeclined", &email).await;
    saga.wait_status(&cancelled, "cancelled", Duration::from_secs(60))
        .await;

    let expected = [
        format!("Order {} is complete", completed.id),
        format!("Order {} is confirmed", completed.id),
        format!("Order {} was cancelled", cancelled.id),
        format!("We could not take order {}", rejected.id),
    ];
    wait_for(
        Duration::from_secs(60),
        "four mails in the sink",
        || async { mails_to(&email).len() >= expected.len() },
    )
    .await;
    let mails = mails_to(&email);
    let mut subjects: Vec<&str> = mails.iter().map(|(s, _)| s.as_str()).collect();
    subjects.sort();
    let mut wanted: Vec<&str> = expected.iter().map(String::as_str).collect();
    wanted.sort();
    assert_eq!(subjects, wanted, "one mail per notified event, none twice");
    let body = |subject: &str| {
        mails
            .iter()
            .find(|(s, _)| s == subject)
            .map(|(_, b)| b.clone())
            .unwrap()
    };
    assert!(
        body(&expected[1]).contains("49.98 EUR"),
        "{}",
        body(&expected[1])
    );
    assert!(
        body(&expected[3]).contains("an item is out of stock"),
        "{}",
        body(&expected[3])
    );
    assert!(body(&expected[2]).contains("the payment was declined"));

    // The operator's view of one order: its two emails, delivered, with the SMTP server's 250.
    let listed = admin_get(
        &saga,
        &format!("/admin/orders/{}/notifications", completed.id),
    )
    .await;
    let deliveries = listed["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{listed}");
    for d in deliveries {
        assert_eq!(d["channel"], "email");
        assert_eq!(d["recipient"], email.as_str());
        assert_eq!(d["state"], "delivered");
        assert_eq!(d["attempt_log"][0]["status_code"], 250);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_action_notice_carries_the_link_the_storefront_gives() {
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let sku = saga.sku("3DS");
    saga.product(&sku, 700, 5).await;
    let receiver = Receiver::start(0, 0).await;
    register(&saga, &receiver.url, &["order.payment_action_required"]).await;
    let set = saga
        .api
        .as_admin(
            Method::PUT,
            &format!(
                "/admin/storefronts/{}/notifications",
                saga.api.storefront_name
            ),
        )
        .json(&json!({"payment_action_url": "https://shop.example/orders/{order_id}/pay"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);

    let order = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 1)])
        .await;
    saga.wait_status(&order, "action_required", Duration::from_secs(60))
        .await;
    wait_for(
        Duration::from_secs(60),
        "the payment action notice",
        || async { acknowledged_for(&receiver, &order.id).len() == 1 },
    )
    .await;
    let notice = receiver
        .acknowledged()
        .into_iter()
        .find(|b| b["order_id"] == order.id.as_str())
        .unwrap();
    assert_eq!(notice["type"], "order.payment_action_required");
    assert_eq!(
        notice["data"]["payment_action_url"],
        format!("https://shop.example/orders/{}/pay", order.id)
    );
    assert!(notice["data"]["action_due_at"].is_string(), "{notice}");
    saga.cancel(&order).await;
}
