//! Integration tests: the real receipts service on 127.0.0.1:0 with a real
//! SQLite file in a temporary directory, driven by reqwest; the crash test
//! runs the binary as a child process and kills it. One test binary with
//! modules, so the crate is linked once.

mod cli;
mod concurrency;
mod contract;
mod crash;
mod judge;
mod reads;

use std::net::SocketAddr;
use std::time::Duration;

use receipts::Config;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Bound on every wait in the tests: a hang is a failure, not a stuck CI.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the service in this process on a fresh database; `configure`
/// adjusts the defaults.
pub async fn spawn_app(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("temp dir"), configure).await
}

/// The database file of a test service in `dir`.
pub fn db_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("receipts.db")
}

/// Starts the service on the database in `dir` (a restart when it exists);
/// returns once `/health` answers.
pub async fn spawn_app_in(dir: TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::new(db_path(&dir));
    configure(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(receipts::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let app = TestApp {
        base: format!("http://{addr}"),
        client: client(),
        dir,
        stop: Some(stop),
        server,
    };
    let health = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .expect("the service starts");
    assert_eq!(health.status(), 200, "the service starts");
    app
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client")
}

/// A valid event for payment `n` of ledger `ledger`.
pub fn event(ledger: &str, n: i64) -> Value {
    json!({
        "event_id": format!("{ledger}:{n}"),
        "payment_id": n,
        "key": format!("pay-{n}"),
        "src": "alice",
        "dest": "bob",
        "amount_minor": 100 + n,
        "paid_at_ms": 1_700_000_000_000i64 + n,
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /receipts` with a JSON body.
    pub async fn deliver(&self, body: &Value) -> reqwest::Response {
        self.deliver_raw("application/json", body.to_string()).await
    }

    pub async fn deliver_raw(&self, content_type: &str, body: String) -> reqwest::Response {
        self.client
            .post(self.url("/receipts"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /receipts")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("JSON")
    }

    pub async fn stats(&self) -> Value {
        self.get_json("/stats").await
    }

    /// `POST /receipts/lookup`: the `events` array.
    pub async fn lookup(&self, event_ids: &[String]) -> Vec<Value> {
        let response = self
            .client
            .post(self.url("/receipts/lookup"))
            .json(&json!({ "event_ids": event_ids }))
            .send()
            .await
            .expect("lookup");
        assert_eq!(response.status(), 200, "lookup");
        let body: Value = response.json().await.expect("JSON");
        body["events"].as_array().expect("events").clone()
    }

    /// Stops the server, checks it shut down cleanly, keeps the database.
    pub async fn stop_keeping_dir(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(WAIT, &mut self.server)
            .await
            .expect("shutdown within the bound");
        result.expect("server task").expect("server result");
        self.dir
    }
}

/// Asserts an RFC 9457 answer: status, problem type and content type.
pub async fn assert_problem(response: reqwest::Response, status: u16, slug: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status for {slug}");
    assert_eq!(header(&response, "content-type"), Some("application/problem+json"));
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["type"], format!("/problems/{slug}"), "{body}");
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()));
    body
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}
