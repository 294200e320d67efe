//! Same seed and the same sequence of connections → the same faults.

use serde_json::{Value, json};

use crate::harness::*;

/// Runs 30 serial payments through a fresh server with `seed` and returns
/// (which ones succeeded, the fault log without timestamps).
async fn scenario(seed: u64) -> (Vec<bool>, Vec<Value>) {
    let http = spawn_counting_http().await;
    let p = spawn_proxy_with(chaos_proxy::Config::new(seed)).await;
    let addr = p.create("payment", http.addr).await;
    p.toxic(
        "payment",
        json!({"name":"up","type":"reset_peer","stream":"upstream","toxicity":0.3,"attributes":{"timeout":1}}),
    )
    .await;
    p.toxic(
        "payment",
        json!({"name":"down","type":"reset_peer","stream":"downstream","toxicity":0.3,"attributes":{"timeout":1}}),
    )
    .await;
    let outcomes = run_payments(addr, 30).await;
    let log = fault_log(&p).await;
    p.shutdown().await;
    (outcomes, log)
}

async fn run_payments(addr: std::net::SocketAddr, n: usize) -> Vec<bool> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(is_ok(&raw_payment(addr).await));
    }
    out
}

async fn fault_log(p: &TestProxy) -> Vec<Value> {
    let mut log = p.stats("payment").await["fault_log"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for e in &mut log {
        if let Some(o) = e.as_object_mut() {
            o.remove("at_ms");
            o.remove("at_unix_us");
        }
    }
    log
}

#[tokio::test]
async fn same_seed_same_faults_run_after_run() {
    let (a, log_a) = scenario(1234).await;
    let (b, log_b) = scenario(1234).await;
    assert_eq!(a, b);
    assert_eq!(log_a, log_b);
    assert!(a.contains(&true) && a.contains(&false), "{a:?}");
    let (c, _) = scenario(4321).await;
    assert_ne!(a, c, "a different seed should give a different pattern");
}

#[tokio::test]
async fn reset_restarts_the_sequence_for_a_replay() {
    let http = spawn_counting_http().await;
    let p = spawn_proxy_with(chaos_proxy::Config::new(99)).await;
    let addr = p.create("payment", http.addr).await;
    let toxic = json!({"name":"up","type":"reset_peer","stream":"upstream","toxicity":0.5,"attributes":{"timeout":0}});
    p.toxic("payment", toxic.clone()).await;
    let first = run_payments(addr, 20).await;
    let log_first = fault_log(&p).await;
    assert_eq!(p.call("POST", "/reset", None).await.status, 204);
    p.toxic("payment", toxic).await;
    let second = run_payments(addr, 20).await;
    assert_eq!(first, second);
    assert_eq!(log_first, fault_log(&p).await);
    p.shutdown().await;
}
