//! Integration tests: the real service on a real port (127.0.0.1:0) with a
//! real SQLite file in a temporary directory, driven by reqwest. One test
//! binary with modules, so the crate is linked once.

mod audit;
mod bad_input;
mod batch;
mod concurrency;
mod contract;
mod crash;
mod db_file;
mod events;
mod exercise;
mod failures;
mod limits;
mod lookup;
mod memory;
mod metrics;
mod outbox;
mod receiver;
mod relay_rate;
mod replays;
mod replicas;
mod wipe;

use std::net::SocketAddr;
use std::time::Duration;

use payment_service::Config;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Bound on every wait in the tests: a hang is a failure, not a stuck CI.
pub const WAIT: Duration = Duration::from_secs(10);

pub const BODY: &str = r#"{"src": "bianca", "dest": "marc", "amount": "1"}"#;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the service in this process with a fresh database; `configure`
/// adjusts the defaults.
pub async fn spawn_app(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("temp dir"), configure).await
}

/// The database file of a test service in `dir`.
pub fn db_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("payments.db")
}

/// Starts the service on the database in `dir` (a restart when it exists).
pub async fn spawn_app_in(dir: TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::new(db_path(&dir));
    configure(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(payment_service::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let app = TestApp {
        base: format!("http://{addr}"),
        client: client(),
        dir,
        stop: Some(stop),
        server,
    };
    // Started (the database open and locked) before the test goes on: tests
    // that touch the file next must not race the start.
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

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /payments` with an optional key in the IETF header.
    pub async fn pay(&self, key: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/payments"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("POST /payments")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("JSON")
    }

    pub async fn stats(&self) -> Value {
        self.get_json("/stats").await
    }

    /// Stops the server and checks that it shut down cleanly and promptly.
    pub async fn stop(self) {
        drop(self.stop_keeping_dir().await);
    }

    /// [`TestApp::stop`], keeping the database for a restart or a look inside.
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
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["type"], format!("/problems/{slug}"), "{body}");
    assert_eq!(body["status"], status);
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()));
    body
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}
