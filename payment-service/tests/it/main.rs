//! Integration tests: the real service on a real port (127.0.0.1:0) with a
//! real SQLite file in a temporary directory, driven by reqwest. One test
//! binary with modules, so the crate is linked once.
//!
//! With `EO_TEST_POSTGRES_URL` set (a server's admin URL, as
//! `.ci/postgres.sh start` prints), the same tests run against PostgreSQL:
//! every database a test names ([`db_at`], [`db_path`]) is a fresh database
//! of its own on that server, and the tests that are about SQLite by nature
//! (its file, its locks, its WAL) skip themselves with the reason.

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
mod pg_backend;
mod raw;
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
    db_at(dir, "payments.db")
}

/// The environment variable that selects PostgreSQL for the suite.
pub const POSTGRES_ENV: &str = "EO_TEST_POSTGRES_URL";

/// The PostgreSQL server's admin URL when the suite runs against PostgreSQL.
pub fn postgres_admin() -> Option<String> {
    std::env::var(POSTGRES_ENV).ok().filter(|url| !url.is_empty())
}

/// The database `name` of the test that owns `dir`: the file `dir/name`, or
/// under [`POSTGRES_ENV`] a fresh PostgreSQL database named after both,
/// created on first use and dropped when the test binary exits.
pub fn db_at(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let Some(admin) = postgres_admin() else {
        return dir.path().join(name);
    };
    let tag: String = format!(
        "{}_{name}",
        dir.path().file_name().and_then(|n| n.to_str()).unwrap_or("x")
    )
    .chars()
    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
    .collect();
    let db = format!("t{tag}");
    let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    if created.is_empty() {
        // SAFETY: atexit(3) registers a function without arguments; it runs
        // once, when the test binary exits.
        unsafe { libc::atexit(drop_test_databases) };
    }
    if !created.contains(&db) {
        let (url, name) = (admin.clone(), db.clone());
        // The synchronous client has a runtime of its own: not on a thread
        // that drives async tasks.
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)
                .expect("the PostgreSQL server of EO_TEST_POSTGRES_URL");
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .expect("CREATE DATABASE");
        })
        .join()
        .expect("database created");
        created.push(db.clone());
    }
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    std::path::PathBuf::from(format!("{base}/{db}"))
}

/// The PostgreSQL databases this run created.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Drops this run's databases when the test binary exits (`atexit`), so a
/// run against a long-lived server leaves nothing behind. Best effort: a
/// failure is reported, never a panic (which would abort in `atexit`).
extern "C" fn drop_test_databases() {
    let dropped = std::panic::catch_unwind(|| {
        let (Some(admin), Ok(created)) = (postgres_admin(), CREATED.lock()) else {
            return 0;
        };
        let Ok(mut client) = postgres::Client::connect(&admin, postgres::NoTls) else {
            return 0;
        };
        created
            .iter()
            .filter(|db| {
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                    .is_ok()
            })
            .count()
    });
    if dropped.is_err() {
        eprintln!("could not drop the test databases of {POSTGRES_ENV}");
    }
}

/// Skips the rest of a test that is about SQLite by nature when the suite
/// runs against PostgreSQL, saying why.
#[macro_export]
macro_rules! sqlite_only {
    ($why:expr) => {
        if $crate::postgres_admin().is_some() {
            eprintln!("skipped on PostgreSQL: {}", $why);
            return;
        }
    };
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
