//! Clients that try to wear the API down: a flood of made-up keys, connections that never send a
//! request, requests whose head or body trickles in, more connections than the API takes. In
//! each case the API keeps answering the clients that behave.

use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;

/// What a storefront that behaves asks meanwhile: its customer's cart (a key lookup, Redis and
/// Postgres), answered within `within`.
async fn behaving_request(api: &common::api::TestApi, within: Duration) -> u16 {
    let started = Instant::now();
    let answer = api
        .as_storefront(Method::GET, "/api/carts/me")
        .header("X-Customer-Id", "cus_behaving")
        .timeout(within)
        .send()
        .await;
    match answer {
        Ok(answer) => answer.status().as_u16(),
        Err(e) => panic!(
            "a behaving request got no answer in {:?}: {e}",
            started.elapsed()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_made_up_keys_is_turned_away_and_known_keys_keep_working() {
    // A key lookup while Postgres is down is rightly 503: not beside a test that stops it.
    let _quiet = common::inventory::exclusive().await;
    let api = common::api::start(|c| c.rate_limits.unauthenticated_per_second = 20).await;
    assert_eq!(behaving_request(&api, Duration::from_secs(5)).await, 200);
    let http = reqwest::Client::new();
    let flood = (0..3_000).map(|i| {
        let request = http
            .get(format!("{}/api/carts/me", api.base))
            .header("X-Customer-Id", "cus_flood")
            .bearer_auth(format!(
                "ks_sf_made_up_{i}_{}",
                uuid::Uuid::new_v4().simple()
            ));
        async move { request.send().await.map(|r| r.status().as_u16()) }
    });
    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    let mut behaving = Vec::new();
    let flood = futures::stream::iter(flood).buffer_unordered(64);
    futures::pin_mut!(flood);
    let mut sent = 0;
    while let Some(answer) = futures::StreamExt::next(&mut flood).await {
        *answers
            .entry(answer.expect("every request is answered"))
            .or_default() += 1;
        sent += 1;
        if sent % 300 == 0 {
            behaving.push(behaving_request(&api, Duration::from_secs(2)).await);
        }
    }
    println!("3,000 made-up keys: {answers:?}; the behaving storefront meanwhile: {behaving:?}");
    assert!(
        answers.keys().all(|s| [401, 429].contains(s)),
        "a made-up key is refused, never 5xx: {answers:?}"
    );
    // 100 at once (5 s' worth of 20/s) and 20 a second after that reach the key store; the rest
    // are turned away before it.
    let reached = answers.get(&401).copied().unwrap_or(0);
    assert!(
        (100..600).contains(&reached),
        "the peer's allowance bounds what reaches the key store: {answers:?}"
    );
    assert!(
        behaving.iter().all(|s| *s == 200),
        "a known key is never counted or refused: {behaving:?}"
    );
}

use futures::StreamExt;

/// Opens a connection to `base`'s address.
async fn connect(base: &str) -> TcpStream {
    TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Whether the server closed `stream` within `deadline` (reads to the end, or a reset).
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(deadline, stream.read_to_end(&mut sink)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_trickling_connections_are_closed_and_others_keep_being_answered() {
    let _quiet = common::inventory::exclusive().await;
    let api = common::api::start(|c| {
        c.server.header_timeout = Duration::from_secs(2);
        c.server.body_timeout = Duration::from_secs(2);
        c.server.max_connections = 200;
    })
    .await;

    // 150 connections that never send a byte, 40 that trickle a request head, byte by byte, and
    // one that sends its head and then trickles its body.
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(connect(&api.base).await);
    }
    let head = format!(
        "GET /api/carts/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nX-Customer-Id: cus_slow\r\n\r\n",
        api.storefront
    );
    let trickling: Vec<_> = (0..40)
        .map(|_| {
            let base = api.base.clone();
            let head = head.clone();
            tokio::spawn(async move {
                let mut stream = connect(&base).await;
                let started = Instant::now();
                for byte in head.as_bytes() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return started.elapsed(); // the server closed it
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await; // a slowloris client's pace
                }
                panic!(
                    "a request head trickled in over {:?} was taken",
                    started.elapsed()
                );
            })
        })
        .collect();
    let mut slow_body = connect(&api.base).await;
    slow_body
        .write_all(
            format!(
                "PUT /api/carts/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nX-Customer-Id: cus_slow\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
                api.storefront
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // 191 connections held; the behaving storefront (on one more) is answered at once.
    for _ in 0..5 {
        assert_eq!(behaving_request(&api, Duration::from_secs(1)).await, 200);
    }

    // The slow body gets 408 after its 2 s.
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), slow_body.read(&mut answer))
        .await
        .expect("an answer to the slow body within 5 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // Idle connections are closed after the 2 s head timeout.
    let started = Instant::now();
    for stream in &mut idle {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "an idle connection is closed"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // So are the trickling ones: cut within the timeout, long before their 30 s heads end.
    for handle in trickling {
        let held = handle.await.expect("trickling client");
        assert!(
            held < Duration::from_secs(5),
            "a trickling head was held {held:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_cap_a_client_waits_its_turn_instead_of_being_dropped() {
    let _quiet = common::inventory::exclusive().await;
    let api = common::api::start(|c| {
        c.server.header_timeout = Duration::from_secs(2);
        c.server.max_connections = 20;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect(&api.base).await);
    }
    // Every slot is taken by a silent connection: the next client is answered once the head
    // timeout frees one (about 2 s), not refused.
    let started = Instant::now();
    assert_eq!(behaving_request(&api, Duration::from_secs(6)).await, 200);
    let waited = started.elapsed();
    println!("answered after {waited:?} with every slot held");
    assert!(
        waited >= Duration::from_millis(1_000),
        "the cap held: {waited:?}"
    );
}
