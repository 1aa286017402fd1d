//! Processors killed, restarted cold or losing what they sent, while orders stream in: every
//! order is decided and the books square (stock and money).

use super::*;

/// The value at fraction `p` of `sorted` (0 when empty).
fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_orders_with_each_processor_killed_once_all_end_and_the_books_square() {
    let _serial = SERIAL.lock().await;
    let saga = saga().await;
    // 20 SKUs; the first five scarce so that some orders are rejected.
    let skus: Vec<String> = (0..20).map(|i| saga.sku(&format!("K{i}"))).collect();
    let mut initial = HashMap::new();
    for (i, sku) in skus.iter().enumerate() {
        let on_hand = if i < 5 { 40 } else { 1_000 };
        saga.product(sku, 100 + i as i64 * 10, on_hand).await;
        initial.insert(sku.clone(), on_hand);
    }
    const ORDERS: usize = 2_000;
    let kills = [
        (300, "inventory"),
        (700, "orders"),
        (1_100, "payments"),
        (1_500, "expiry"),
    ];
    let plan: Vec<(String, Vec<(String, i32)>)> = (0..ORDERS)
        .map(|n| {
            let method = match n % 20 {
                0 | 1 => "pm_card_chargeDeclined",
                2 => "pm_card_threeDSecure2Required",
                _ => "pm_card_visa",
            };
            let lines = vec![
                (skus[n % 20].clone(), 1 + (n % 3) as i32),
                (skus[(n * 7 + 3) % 20].clone(), 1),
            ];
            let lines = if lines[0].0 == lines[1].0 {
                vec![lines[0].clone()]
            } else {
                lines
            };
            (method.to_owned(), lines)
        })
        .collect();

    // As fast as 16 clients go, or paced at KASSA_SAGA_RUN_RATE orders/s (to measure below saturation).
    let rate: Option<f64> = std::env::var("KASSA_SAGA_RUN_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0.0);
    let started = Instant::now();
    let mut accepted: Vec<(Placed, chrono::DateTime<chrono::Utc>)> = Vec::with_capacity(ORDERS);
    let saga_ref = &saga;
    let mut placing = futures::stream::iter(plan.iter().enumerate())
        .map(|(n, (method, lines))| async move {
            if let Some(rate) = rate {
                // Open loop: each order at its intended time.
                tokio::time::sleep_until(
                    (started + Duration::from_secs_f64(n as f64 / rate)).into(),
                )
                .await;
            }
            let lines: Vec<(&str, i32)> = lines.iter().map(|(s, q)| (s.as_str(), *q)).collect();
            let order = saga_ref.place(method, &lines).await;
            (order, chrono::Utc::now())
        })
        .buffer_unordered(16);
    let mut placed = 0;
    while let Some((order, at)) = placing.next().await {
        accepted.push((order, at));
        placed += 1;
        if let Some((_, victim)) = kills.iter().find(|(when, _)| *when == placed) {
            with_processor(victim, |p| p.restart_after_kill());
            eprintln!("killed and restarted {victim} after {placed} orders");
        }
    }
    let placing_took = started.elapsed();

    // Every order reaches a final state.
    let ids: Vec<String> = accepted.iter().map(|(o, _)| o.id.clone()).collect();
    let pool = saga.pool().clone();
    wait_for(Duration::from_secs(300), "every order completed, rejected or cancelled", || {
        let (pool, ids) = (pool.clone(), ids.clone());
        async move {
            let open: i64 = sqlx::query_scalar(
                "SELECT $2::bigint - count(*) FROM orders.orders WHERE order_id = ANY($1) AND state IN ('completed', 'rejected', 'cancelled')",
            )
            .bind(&ids)
            .bind(ids.len() as i64)
            .fetch_one(&pool)
            .await
            .unwrap();
            open == 0
        }
    })
    .await;
    // Compensation trails the final state: releases go through the outbox and inventory.commands,
    // voids through payments' worker. Wait for both to settle before squaring the books.
    wait_for(Duration::from_secs(120), "every hold of a decided order released or committed, every open authorization of an undone order voided", || {
        let (pool, ids) = (pool.clone(), ids.clone());
        async move {
            let (held, dangling): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM inventory.reservations WHERE order_id = ANY($1) AND status = 'active'),
                        (SELECT count(*) FROM simulator.intents i JOIN orders.orders o USING (order_id)
                         WHERE i.order_id = ANY($1) AND o.state <> 'completed' AND i.status = 'requires_capture')",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await
            .unwrap();
            held == 0 && dangling == 0
        }
    })
    .await;
    let finals: Vec<(String, String, i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT order_id, state, total_minor, updated_at FROM orders.orders WHERE order_id = ANY($1)")
            .bind(&ids)
            .fetch_all(saga.pool())
            .await
            .unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (_, state, _, _) in &finals {
        *counts.entry(state.as_str()).or_default() += 1;
    }

    // Stock squares: nothing held, nothing oversold, committed = what completed orders bought.
    let mut bought: HashMap<String, i64> = HashMap::new();
    let completed: Vec<&String> = finals
        .iter()
        .filter(|f| f.1 == "completed")
        .map(|f| &f.0)
        .collect();
    let lines: Vec<(String, String, i32, String)> =
        sqlx::query_as("SELECT order_id, sku, quantity, status FROM inventory.reservations WHERE order_id = ANY($1)")
            .bind(&ids)
            .fetch_all(saga.pool())
            .await
            .unwrap();
    let (mut held, mut released, mut committed) = (0i64, 0i64, 0i64);
    for (order, sku, quantity, status) in &lines {
        match status.as_str() {
            "committed" => {
                committed += i64::from(*quantity);
                assert!(
                    completed.contains(&order),
                    "stock committed for {order}, which did not complete"
                );
                *bought.entry(sku.clone()).or_default() += i64::from(*quantity);
            }
            "released" => released += i64::from(*quantity),
            "active" => held += i64::from(*quantity),
            _ => {}
        }
    }
    assert_eq!(
        held, 0,
        "no units are still held once every order is decided"
    );
    for sku in &skus {
        let (on_hand, reserved, sold) = common::saga::stock(saga.pool(), sku).await.unwrap();
        assert_eq!(reserved, 0, "{sku}: nothing reserved at the end");
        assert_eq!(
            sold,
            bought.get(sku).copied().unwrap_or(0),
            "{sku}: sold = what completed orders bought"
        );
        assert_eq!(on_hand + sold, initial[sku], "{sku}: units are conserved");
    }

    // Money squares: captured = the totals of completed orders; nobody is charged twice.
    let effects = effects(&saga, &ids).await;
    let mut captured_total = 0;
    let mut completed_total = 0;
    for (order, state, total, _) in &finals {
        let (authorizations, captures, captured) = effects.get(order).copied().unwrap_or((0, 0, 0));
        assert!(
            authorizations <= 1 && captures <= 1,
            "order {order}: {authorizations} authorizations, {captures} captures"
        );
        if state == "completed" {
            assert_eq!(
                (captures, captured),
                (1, *total),
                "order {order}: captured its total once"
            );
            completed_total += total;
        } else {
            assert_eq!(captures, 0, "order {order} ({state}) was not charged");
        }
        captured_total += captured;
    }
    assert_eq!(
        captured_total, completed_total,
        "captured money = the sum of completed orders"
    );
    // An authorization of an order that did not complete was voided at the provider.
    let dangling: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM simulator.intents i JOIN orders.orders o USING (order_id)
         WHERE i.order_id = ANY($1) AND o.state <> 'completed' AND i.status = 'requires_capture'",
    )
    .bind(&ids)
    .fetch_one(saga.pool())
    .await
    .unwrap();
    assert_eq!(
        dangling, 0,
        "no authorization is left open on an undone order"
    );

    // The figures of the run.
    let accepted_at: HashMap<&str, chrono::DateTime<chrono::Utc>> = accepted
        .iter()
        .map(|(o, at)| (o.id.as_str(), *at))
        .collect();
    let mut latencies: Vec<i64> = finals
        .iter()
        .filter(|f| f.1 == "completed")
        .map(|(id, _, _, at)| (*at - accepted_at[id.as_str()]).num_milliseconds())
        .collect();
    latencies.sort_unstable();
    let confirmed_at: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT order_id, min(at) FROM orders.transitions WHERE order_id = ANY($1) AND applied AND to_state = 'confirmed' GROUP BY 1",
    )
    .bind(&ids)
    .fetch_all(saga.pool())
    .await
    .unwrap();
    let mut to_confirmed: Vec<i64> = confirmed_at
        .iter()
        .map(|(id, at)| (*at - accepted_at[id.as_str()]).num_milliseconds())
        .collect();
    to_confirmed.sort_unstable();
    eprintln!(
        "2,000-order run: placed in {:.1} s ({} answers 503, retried); completed {}, rejected {}, cancelled {}; units reserved {}, released {}, committed {}; \
         captured {} minor units; accept -> confirmed p50 {} ms, p99 {} ms; accept -> completed p50 {} ms, p99 {} ms, max {} ms",
        placing_took.as_secs_f64(),
        saga.unavailable.load(std::sync::atomic::Ordering::Relaxed),
        counts.get("completed").unwrap_or(&0),
        counts.get("rejected").unwrap_or(&0),
        counts.get("cancelled").unwrap_or(&0),
        released + committed,
        released,
        committed,
        captured_total,
        percentile(&to_confirmed, 0.5),
        percentile(&to_confirmed, 0.99),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap_or(&0),
    );
    assert!(
        counts.get("completed").copied().unwrap_or(0) > ORDERS / 2,
        "most orders complete: {counts:?}"
    );
    assert!(
        counts.contains_key("rejected") && counts.contains_key("cancelled"),
        "every outcome happened: {counts:?}"
    );
}

/// Messages on every processor's dead-letter topic now, per group.
fn dead_letter_ends(saga: &Saga) -> HashMap<&'static str, i64> {
    ConsumerGroup::ALL
        .into_iter()
        .map(|g| {
            (
                g.name(),
                end_offsets(&saga.api.settings, &g.dlq_topic())
                    .values()
                    .sum(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_failures_while_processors_restart_cold_dead_letter_no_valid_message() {
    let _serial = SERIAL.lock().await;
    let saga = saga().await;
    let sku = saga.sku("REGISTRY");
    saga.product(&sku, 700, 1_000).await;
    let dead_before = dead_letter_ends(&saga);

    // Processors restart cold (no schema cached) behind a registry that fails in every way a
    // registry restarting over a restarting Postgres fails, while orders stream in. The saga is a
    // chain, so each phase restarts the processors further down it: inventory first (35 s of
    // faults, everything behind it waits), then orders, then payments and expiry.
    let registry = saga.api.settings.schema_registry_url.clone();
    let rest = registry
        .strip_prefix("http://")
        .expect("an http registry URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let upstream = tokio::net::lookup_host(authority)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream, Fault::Pass).await;
    let proxied = proxy.url(path);
    let env: Vec<(&str, &str)> = ENV
        .iter()
        .copied()
        .chain([("KASSA_SCHEMA_REGISTRY_URL", proxied.as_str())])
        .collect();
    let sequence = [
        Fault::Status(500),
        Fault::Status(504),
        Fault::Status(401),
        Fault::Status(403),
        Fault::Status(404),
        Fault::Garbage,
        Fault::Refuse,
    ];
    let all = processors();
    let phases: [(&[&str], u64, usize); 3] = [
        (&all[..], 5, 300),
        (&all[1..], 2, 100),
        (&["payments", "expiry"], 2, 100),
    ];
    let mut placed = Vec::new();
    for (restarted, seconds_each, orders) in phases {
        proxy.set(sequence[0]);
        for name in restarted {
            stop_processor(name);
            start_processor(name, &env);
        }
        let placing = async {
            let mut placed = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(50));
            for _ in 0..orders {
                pace.tick().await;
                placed.push(saga.place("pm_card_visa", &[(&sku, 1)]).await);
            }
            placed
        };
        let faults = async {
            for fault in sequence {
                proxy.set(fault);
                tokio::time::sleep(Duration::from_secs(seconds_each)).await; // each fault's length is the test's input
            }
            proxy.set(Fault::Pass);
        };
        let (phase, ()) = tokio::join!(placing, faults);
        placed.extend(phase);
    }
    for order in &placed {
        saga.wait_status(order, "completed", Duration::from_secs(180))
            .await;
    }
    let dead_after = dead_letter_ends(&saga);
    assert_eq!(
        dead_after, dead_before,
        "no valid message was dead-lettered"
    );
    println!(
        "registry faults: {} orders placed during registry failures (35 s, then 14 s twice), all completed, 0 dead letters",
        placed.len()
    );
    for name in processors() {
        stop_processor(name);
        start_processor(name, ENV);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_whose_commit_or_confirmation_was_lost_is_asked_again_and_completes() {
    let _serial = SERIAL.lock().await;
    let saga = saga().await;
    let pool = saga.pool().clone();
    let settings = saga.api.settings.clone();
    let sku = saga.sku("STALL");
    saga.product(&sku, 900, 10).await;

    // A lost Commit: inventory is stopped while the order is authorized, and its backlog (the
    // Commit) skipped by an operator.
    stop_processor("payments");
    let first = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    saga.wait_status(&first, "authorizing", Duration::from_secs(60))
        .await;
    stop_processor("inventory");
    start_processor("payments", ENV);
    saga.wait_status(&first, "authorized", Duration::from_secs(60))
        .await;
    skip_backlog(&settings, &pool, ConsumerGroup::Inventory).await;
    start_processor("inventory", ENV);
    saga.wait_status(&first, "completed", Duration::from_secs(60))
        .await;

    // A lost OrderConfirmed: payments is stopped once the order is authorized, and its backlog
    // (the confirmation) skipped.
    stop_processor("payments");
    let second = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    saga.wait_status(&second, "authorizing", Duration::from_secs(60))
        .await;
    stop_processor("inventory");
    start_processor("payments", ENV);
    saga.wait_status(&second, "authorized", Duration::from_secs(60))
        .await;
    stop_processor("payments");
    start_processor("inventory", ENV);
    saga.wait_status(&second, "confirmed", Duration::from_secs(60))
        .await;
    skip_backlog(&settings, &pool, ConsumerGroup::Payments).await;
    start_processor("payments", ENV);
    saga.wait_status(&second, "completed", Duration::from_secs(60))
        .await;

    for (order, waited_in) in [(&first, "authorized"), (&second, "confirmed")] {
        let stalls: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders.transitions WHERE order_id = $1 AND trigger = 'ProgressDue' AND applied AND to_state = $2",
        )
        .bind(&order.id)
        .bind(waited_in)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(
            stalls >= 1,
            "order {} was found stalled in {waited_in} and asked again",
            order.id
        );
        let (authorizations, captures, _) =
            effects(&saga, std::slice::from_ref(&order.id)).await[&order.id];
        assert_eq!(
            (authorizations, captures),
            (1, 1),
            "order {}: one authorization, one capture",
            order.id
        );
    }
    saga.wait_stock(&sku, (8, 0, 2)).await;
}
