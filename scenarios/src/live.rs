//! `scenarios --live`: a page on loopback that a facilitator projects while
//! the lessons play. One self-contained HTML file (no CDN: the room may have
//! no internet) fed by server-sent events from the runner: per lesson the
//! money intended and moved as it happens, faults up and down, requests,
//! the replays and 409s the service sent, then the verdict, the replays and
//! 409s the client received (fewer when answers were lost on the way back),
//! and the story of one payment.
//!
//! The page also reports what it shows (`POST /seen`, read back with
//! `GET /seen`), so a test in a real browser can compare the page's numbers
//! with the runner's verdict.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body::Frame;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, oneshot};

/// The page, built into the binary.
const PAGE: &str = include_str!("live.html");
/// Pages connected at once at most (a projector and a few laptops).
const PAGES_MAX: usize = 16;
/// Events buffered per page; a page that falls further behind gets the whole state again.
const PAGE_EVENTS_QUEUED_MAX: usize = 256;
/// Events kept for pages that lag; beyond, they resynchronise from the snapshot.
const BROADCAST_EVENTS_MAX: usize = 1024;
/// A comment line this often keeps an idle stream open through the server's idle limit.
const KEEP_ALIVE_MS: u64 = 5_000;
/// Body of `POST /seen` at most.
const SEEN_BYTES_MAX: usize = 64 * 1024;
/// How long the runner waits for a first page before playing.
pub const FIRST_PAGE_WAIT_MS: u64 = 10_000;

/// The server's limits (eo-core's bounded server).
const LIMITS: eo_core::serve::Limits = eo_core::serve::Limits {
    connections_max: 64,
    header_read_ms_max: 10_000,
    body_read_ms_max: 10_000,
    idle_ms_max: 30_000,
    drain_ms_max: 1_000,
};

/// The state shown, and the stream of changes.
pub struct Hub {
    /// Lesson name → everything known about it (what a new page is sent first).
    lessons: Mutex<BTreeMap<String, Value>>,
    /// Lesson names in playing order.
    order: Mutex<Vec<String>>,
    changes: broadcast::Sender<String>,
    /// What the page last said it shows (`POST /seen`).
    seen: Mutex<Value>,
    pages: Arc<Semaphore>,
    connected: Notify,
}

impl Hub {
    fn new() -> Hub {
        Hub {
            lessons: Mutex::new(BTreeMap::new()),
            order: Mutex::new(Vec::new()),
            changes: broadcast::channel(BROADCAST_EVENTS_MAX).0,
            seen: Mutex::new(json!({})),
            pages: Arc::new(Semaphore::new(PAGES_MAX)),
            connected: Notify::new(),
        }
    }

    /// Merges `fields` into lesson `name` and sends its whole new state.
    pub fn update(&self, name: &str, fields: Value) {
        let lesson = {
            let Ok(mut lessons) = self.lessons.lock() else { return };
            let entry = lessons
                .entry(name.to_owned())
                .or_insert_with(|| json!({ "name": name }));
            if let (Some(entry), Some(fields)) = (entry.as_object_mut(), fields.as_object()) {
                for (k, v) in fields {
                    entry.insert(k.clone(), v.clone());
                }
            }
            entry.clone()
        };
        if let Ok(mut order) = self.order.lock()
            && !order.iter().any(|n| n == name)
        {
            order.push(name.to_owned());
        }
        let _ = self.changes.send(sse("lesson", &lesson));
    }

    fn snapshot(&self) -> String {
        let lessons = self.lessons.lock().map(|l| l.clone()).unwrap_or_default();
        let order = self.order.lock().map(|o| o.clone()).unwrap_or_default();
        let list: Vec<&Value> = order.iter().filter_map(|n| lessons.get(n)).collect();
        sse("all", &json!({ "lessons": list }))
    }
}

/// One server-sent event.
fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// The running page server.
pub struct Live {
    pub hub: Arc<Hub>,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Live {
    /// Serves the page on `addr`, which must be a loopback address.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Live> {
        if !addr.ip().is_loopback() {
            bail!("--live serves on loopback only (127.0.0.1:PORT), not {addr}");
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve the live page on {addr}"))?;
        let url = format!("http://{}/", listener.local_addr()?);
        let hub = Arc::new(Hub::new());
        let app = Router::new()
            .route("/", get(page))
            .route("/events", get(events))
            .route("/seen", get(seen).post(report_seen))
            .with_state(Arc::clone(&hub));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(eo_core::serve::serve(listener, app, LIMITS, async move {
            let _ = stopped.await;
        }));
        Ok(Live {
            hub,
            url,
            stop: Some(stop),
            task,
        })
    }

    /// Waits (bounded) until a page is connected.
    pub async fn first_page(&self, wait: Duration) -> bool {
        let connected = self.hub.connected.notified();
        if self.hub.pages.available_permits() < PAGES_MAX {
            return true;
        }
        tokio::time::timeout(wait, connected).await.is_ok()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_millis(crate::parts::STEP_TIMEOUT_MS), &mut self.task).await;
    }
}

async fn page() -> Response {
    let html = HeaderValue::from_static("text/html; charset=utf-8");
    ([(header::CONTENT_TYPE, html)], PAGE).into_response()
}

/// A response body fed by a channel: the event stream of one page.
struct Stream(mpsc::Receiver<Bytes>);

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// `GET /events`: the whole state, then every change, as server-sent events.
async fn events(State(hub): State<Arc<Hub>>) -> Response {
    let Ok(permit) = Arc::clone(&hub.pages).try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live pages are open\n").into_response();
    };
    let (tx, rx) = mpsc::channel(PAGE_EVENTS_QUEUED_MAX);
    let mut changes = hub.changes.subscribe();
    let first = hub.snapshot();
    hub.connected.notify_waiters();
    tokio::spawn(async move {
        let _permit = permit;
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        loop {
            let next = tokio::time::timeout(Duration::from_millis(KEEP_ALIVE_MS), changes.recv()).await;
            let chunk = match next {
                Ok(Ok(event)) => event,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => hub.snapshot(),
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_) => ": keep-alive\n\n".to_owned(),
            };
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return; // The page went away.
            }
        }
    });
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    (headers, Body::new(Stream(rx))).into_response()
}

async fn seen(State(hub): State<Arc<Hub>>) -> Response {
    let seen = hub.seen.lock().map(|s| s.clone()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], seen.to_string()).into_response()
}

/// `POST /seen`: what the page shows, as the page read it from its own DOM.
async fn report_seen(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    if body.len() > SEEN_BYTES_MAX {
        return (StatusCode::PAYLOAD_TOO_LARGE, "at most 64 KiB\n").into_response();
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(value) if value.is_object() => {
            if let Ok(mut seen) = hub.seen.lock() {
                *seen = value;
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "a JSON object, please\n").into_response(),
    }
}

/// How often a playing lesson's figures are read and sent.
const POLL_MS: u64 = 250;

/// Feeds the page from the lessons' events: reads the parts while a lesson
/// plays, sends its verdict and one payment's story when it is judged.
pub struct Feed {
    hub: Arc<Hub>,
    /// Lesson name → (position, title).
    lessons: BTreeMap<String, (usize, String)>,
    total: usize,
    poller: Option<tokio::task::JoinHandle<()>>,
}

impl Feed {
    pub fn new(hub: Arc<Hub>, chosen: &[crate::catalog::Scenario]) -> Feed {
        let lessons = chosen
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), (i + 1, s.title.clone())))
            .collect();
        Feed {
            hub,
            lessons,
            total: chosen.len(),
            poller: None,
        }
    }

    pub async fn started(&mut self, parts: &crate::observe::Parts) {
        let (index, title) = self.lessons.get(&parts.lesson).cloned().unwrap_or_default();
        let intended = client::money::format_minor(parts.intended_minor);
        let fields = json!({
            "index": index, "total": self.total, "title": title, "state": "playing",
            "payments": parts.payments, "intended": intended, "moved": "0.00", "updates": 0,
        });
        self.stop_polling().await;
        self.hub.update(&parts.lesson, fields);
        self.poller = Some(tokio::spawn(poll(Arc::clone(&self.hub), parts.clone())));
    }

    /// Stops the poller and waits until it has stopped: `abort` alone lets a
    /// sample already read on another worker land after the verdict and
    /// overwrite it with the service's own counts (seen in CI: the page
    /// showed the service's 163 replays, not the 115 the client saw).
    async fn stop_polling(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.abort();
            let _ = poller.await;
        }
    }

    /// The service's final figures and the verdict, then the story of the
    /// lesson's example payment (read while the parts are still up).
    pub async fn judged(&mut self, parts: &crate::observe::Parts, o: &crate::play::Outcome) {
        self.stop_polling().await;
        if let Ok(http) = crate::parts::http()
            && let Some(last) = sample(&http, parts).await
        {
            self.hub.update(&parts.lesson, last);
        }
        let metric = |name: &str| o.metrics.get(name).copied().unwrap_or(0);
        let fields = json!({
            "state": "judged", "intended": o.intended, "moved": o.moved,
            "verdict": o.headline(), "expected": o.expected.headline(), "pass": o.pass,
            "attempts": metric("attempts"), "replays": metric("replays"),
            "conflicts_409": metric("conflicts_409"),
            "faults_up": metric("faults_upstream"), "faults_down": metric("faults_downstream"),
            "receipts": o.receipts.as_ref().map(|r| crate::play::receipt_headline(r.outcome)),
            "expected_receipts": o.expected_receipts.map(crate::play::receipt_headline),
        });
        self.hub.update(&parts.lesson, fields);
        let Some(example) = &o.example else { return };
        let choice = crate::explain::Choice::Payment(example.payment);
        if let Ok(evidence) = crate::explain::collect(parts, &choice, &[]).await {
            let steps = crate::story::steps(&evidence);
            let title = format!("payment {}: {}", evidence.payment, crate::story::told(&evidence).1);
            let lines: Vec<String> = crate::diagram::terminal(&steps, &title).into_iter().flatten().collect();
            self.hub.update(&parts.lesson, json!({ "story": lines }));
        }
    }
}

/// Reads the service's `/stats` and the proxy's fault counts until aborted.
async fn poll(hub: Arc<Hub>, parts: crate::observe::Parts) {
    let Ok(http) = crate::parts::http() else { return };
    let mut updates = 0u64;
    loop {
        if let Some(mut fields) = sample(&http, &parts).await {
            updates += 1;
            fields["updates"] = json!(updates);
            hub.update(&parts.lesson, fields);
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// What the page shows while a lesson plays: the money moved (the shared
/// ledger's, from the first replica), the requests, replays and 409s of every
/// replica, and the faults of every proxy route. None if any read failed; a
/// figure a replica does not report (a service of another shape) is null,
/// shown as "–", never as 0.
async fn sample(http: &reqwest::Client, parts: &crate::observe::Parts) -> Option<Value> {
    let first = read(http, &format!("{}/stats", parts.service_url)).await?;
    let (mut requests, mut replays, mut conflicts) = (Some(0u64), Some(0u64), Some(0u64));
    let add = |sum: Option<u64>, n: Option<u64>| sum.zip(n).map(|(a, b)| a.saturating_add(b));
    for replica in &parts.replica_urls {
        let stats = read(http, &format!("{replica}/stats")).await?;
        let count = |field: &str| stats[field].as_u64();
        (requests, replays, conflicts) = (
            add(requests, count("received")),
            add(replays, count("replayed")),
            add(conflicts, count("conflicts_409")),
        );
    }
    let (mut up, mut down) = (0, 0);
    for route in &parts.routes {
        let proxy = read(http, &format!("{}/proxies/{route}/stats", parts.proxy_api)).await?;
        let (u, d) = fault_counts(&proxy);
        (up, down) = (up + u, down + d);
    }
    Some(json!({
        "moved": first["total_amount"], "requests": requests, "replays_sent": replays,
        "conflicts_sent": conflicts, "faults_up": up, "faults_down": down,
    }))
}

async fn read(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// (upstream, downstream) faults from a proxy's stats.
fn fault_counts(stats: &Value) -> (u64, u64) {
    let (mut up, mut down) = (0, 0);
    for fault in stats["faults"].as_array().into_iter().flatten() {
        let count = fault["count"].as_u64().unwrap_or(0);
        if fault["stream"] == "upstream" {
            up += count;
        } else {
            down += count;
        }
    }
    (up, down)
}
