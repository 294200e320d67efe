//! The client never waits for `/stats` (whose figures may cost the service a
//! scan of its whole ledger): it finds where the ledger stands with one-row
//! pages, and after a run alone on the service its judge reads the keys'
//! lookups and no id window page.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

use crate::{args, client, read_message, reply_and_close, spawn_service};

/// What the forwarding stub was asked.
#[derive(Default)]
struct Asked {
    stats: AtomicUsize,
    /// `GET /payments` pages of up to 1000 (the id window and the tail).
    full_pages: AtomicUsize,
}

/// A `--service` that forwards every read to `upstream` except `GET /stats`,
/// which it never answers (the connection stays open).
async fn service_without_stats(upstream: String) -> (String, Arc<Asked>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let asked = Arc::new(Asked::default());
    let counts = Arc::clone(&asked);
    tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
        while let Ok((stream, _)) = listener.accept().await {
            let (http, upstream, counts) = (http.clone(), upstream.clone(), Arc::clone(&counts));
            tokio::spawn(forward(stream, http, upstream, counts));
        }
    });
    (url, asked)
}

async fn forward(mut stream: TcpStream, http: reqwest::Client, upstream: String, asked: Arc<Asked>) {
    let Ok(request) = read_message(&mut stream).await else {
        return;
    };
    let text = String::from_utf8_lossy(&request).into_owned();
    let line = text.lines().next().unwrap_or_default().to_owned();
    let mut words = line.split(' ');
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    if path.starts_with("/stats") {
        asked.stats.fetch_add(1, Ordering::Relaxed);
        // Held open, never answered, until the test ends.
        std::future::pending::<()>().await;
    }
    if path.contains("limit=1000") {
        asked.full_pages.fetch_add(1, Ordering::Relaxed);
    }
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    let url = format!("{upstream}{path}");
    let sent = match method {
        "POST" => http.post(url).header("content-type", "application/json").body(body),
        _ => http.get(url),
    };
    let Ok(answer) = sent.send().await else { return };
    let status = answer.status().as_u16();
    let body = answer.text().await.unwrap_or_default();
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    reply_and_close(stream, reply.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_never_waits_for_stats_and_reads_no_window_when_alone() {
    let service = spawn_service(|_| {}).await;
    let (reads, asked) = service_without_stats(service.url.clone()).await;
    let count = 2500u64;
    let pay = args(&[
        "pay",
        "--count",
        &count.to_string(),
        "--seed",
        "77",
        "--json",
        "--concurrency",
        "16",
        "--connection",
        "reuse",
        "--target",
        &service.url,
        "--service",
        &reads,
    ]);
    for (run, replays) in [("fresh", 0), ("same-seed re-run", count)] {
        let output = client(pay.clone()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{run}: {:?} {stderr}", output.status);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        assert_eq!(report["verdict"], "exactly-once", "{run}: {report}");
        assert_eq!(report["reconciliation"]["exactly_once"], count, "{run}");
        assert_eq!(report["summary"]["replays_seen"], replays, "{run}");
        // Three lookups of 999 keys, a few one-row probes, one page after the window.
        let requests = report["reading"]["requests"].as_u64().expect("requests");
        assert!(requests <= count.div_ceil(999) + 6, "{run}: {requests} requests");
    }
    assert_eq!(asked.stats.load(Ordering::Relaxed), 0, "/stats was never asked");
    assert_eq!(
        asked.full_pages.load(Ordering::Relaxed),
        2,
        "one page after the window per run, and no window page: the lookups accounted for every id"
    );
}
