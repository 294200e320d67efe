//! The client's memory per payment, counted by the allocator (a test binary
//! of its own, so nothing else runs in it): the intents of a run and the
//! judge's state stay a few dozen bytes a payment, not the hundreds that
//! strings and maps per payment cost.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use client::reconcile::{Attempts, Evidence, Mode, Verdict};
use client::runner::{Intents, key_for};
use client::strategy::KeyStrategy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Counts the bytes held now and the most held since the last reset.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(held, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes held now; the peak starts again from here.
fn reset_peak() -> usize {
    let held = HELD.load(Ordering::Relaxed);
    PEAK.store(held, Ordering::Relaxed);
    held
}

const PAYMENTS: usize = 200_000;
const SEED: u64 = 5;

/// A stand-in service holding payment `i` (id `i + 1`) under `key_for(SEED,
/// i)` for every intent: answers one-row and full pages by id and lookups.
async fn ledger_stub() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream));
        }
    });
    url
}

fn payment(id: u64) -> String {
    let key = key_for(SEED, (id - 1) as usize);
    format!(r#"{{"id":{id},"src":"bianca","dest":"marc","amount_minor":100,"idempotency_key":"{key}"}}"#)
}

async fn answer(mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (head, body) = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&request).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                .unwrap_or(0);
            if body.len() >= length {
                break (head.to_owned(), body.to_owned());
            }
        }
    };
    let ids: Vec<u64> = if head.starts_with("POST /payments/lookup") {
        let lookup: serde_json::Value = serde_json::from_str(&body).expect("a lookup");
        let keys = lookup["keys"].as_array().expect("keys");
        let ids = keys.iter().filter_map(|k| client::intents::parse_key(k.as_str()?));
        ids.map(|(_, index)| index as u64 + 1).collect()
    } else {
        let number = |name: &str| -> u64 {
            let rest = head.split(name).nth(1).unwrap_or_default();
            rest.split(['&', ' ']).next().and_then(|n| n.parse().ok()).unwrap_or(0)
        };
        let (after, limit) = (number("after_id="), number("limit="));
        (after + 1..=after + limit)
            .filter(|id| *id <= PAYMENTS as u64)
            .collect()
    };
    let page: Vec<String> = ids.iter().map(|&id| payment(id)).collect();
    let body = format!(r#"{{"payments":[{}],"next_after_id":null}}"#, page.join(","));
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_and_the_judge_take_a_few_dozen_bytes_a_payment() {
    let url = ledger_stub().await;
    let before = reset_peak();
    let intents = Intents::repeat(PAYMENTS, "bianca", "marc", 100, SEED);
    let table = HELD.load(Ordering::Relaxed) - before;
    // A `Vec<Intent>` of the same took about 200 bytes a payment.
    assert!(table <= 33 * PAYMENTS, "{} bytes a payment", table / PAYMENTS);

    let mode = Mode::Fresh { baseline_id: 0 };
    let evidence = Evidence {
        intents: &intents,
        attempts: Attempts::Records(&[]),
        strategy: KeyStrategy::PerPayment,
        mode: &mode,
    };
    let before = reset_peak();
    let (judgement, reading) = client::flow::judge(&url, Duration::from_secs(60), &evidence).await;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let r = judgement.expect("a verdict");
    assert_eq!((r.verdict, r.exactly_once), (Verdict::ExactlyOnce, PAYMENTS as u64));
    assert!(reading.requests <= PAYMENTS.div_ceil(999) as u64 + 6, "{reading:?}");
    // What it told and found per payment (12 bytes), a bit per id, and a
    // few pages in flight; the judge that kept maps of keys and payments by
    // id held about 150 bytes a payment.
    assert!(
        peak <= 40 * PAYMENTS,
        "the judge held up to {} bytes a payment",
        peak / PAYMENTS
    );
}
