//! Client tests against a real payment service on 127.0.0.1:0, through a
//! small deterministic fault proxy (resets before the request reaches the
//! service, or after it answered) and against a scripted server for the retry
//! rules. One test binary with modules.

mod at_scale;
mod batches;
mod faults;
mod inconclusive;
mod ledger_crash;
mod no_stats;
mod reconciliation;
mod replicas;
mod resume;
mod retry_rules;
mod strategies;
mod urls;

use std::net::SocketAddr;
use std::time::Duration;

use payment_service::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// A payment service in this process, on a free port, with a fresh database.
pub struct Service {
    pub url: String,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn spawn_service(configure: impl FnOnce(&mut Config)) -> Service {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(dir.path().join("payments.db"));
    // Tests need no power-loss durability; keep them quick.
    config.synchronous = payment_service::Synchronous::Normal;
    configure(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(payment_service::run(listener, config, async move {
        let _ = stopped.await;
    }));
    Service {
        url: format!("http://{addr}"),
        addr,
        _dir: dir,
        _stop: stop,
    }
}

pub async fn stats(service: &Service) -> serde_json::Value {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client")
        .get(format!("{}/stats", service.url))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json")
}

/// Reconciles through the library's judge, with a 10 s reading deadline;
/// `attempts` are records (`&[AttemptRecord]`) or a run's `&Outcomes`.
pub async fn judge<'a>(
    service: &str,
    mode: client::reconcile::Mode,
    intents: &[client::runner::Intent],
    attempts: impl Into<client::reconcile::Attempts<'a>>,
    strategy: client::strategy::KeyStrategy,
) -> Result<client::reconcile::Reconciliation, client::service::Inconclusive> {
    let intents = client::intents::Intents::from(intents);
    let evidence = client::reconcile::Evidence {
        intents: &intents,
        attempts: attempts.into(),
        strategy,
        mode: &mode,
    };
    client::flow::judge(service, Duration::from_secs(10), &evidence).await.0
}

/// The service's last payment id (the baseline of a fresh run).
pub async fn baseline(service: &Service) -> client::reconcile::Mode {
    let baseline_id = client::flow::baseline(&service.url).await.expect("baseline");
    client::reconcile::Mode::Fresh { baseline_id }
}

/// Runs the `client` binary with `args` off the test's runtime (the service
/// runs on it) and returns its output.
pub async fn client(args: Vec<String>) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_client"));
    command.args(args);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run the client")
}

/// Turns `["a", "b"]` into owned arguments.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A stand-in HTTP server: every request gets `answer(request line)` as
/// (status, JSON body), and the connection is closed. Returns its URL and how
/// many requests it got.
pub async fn spawn_stub(
    answer: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (counter, answer) = (std::sync::Arc::clone(&requests), std::sync::Arc::new(answer));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (counter, answer) = (std::sync::Arc::clone(&counter), std::sync::Arc::clone(&answer));
            tokio::spawn(async move {
                let Ok(request) = read_message(&mut stream).await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let text = String::from_utf8_lossy(&request);
                let (status, body) = answer(text.lines().next().unwrap_or_default());
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                reply_and_close(stream, reply.as_bytes()).await;
            });
        }
    });
    (url, requests)
}

/// Reads one HTTP/1.1 message (headers and a Content-Length body) from `stream`.
pub async fn read_message(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(buf);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("message too large"));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `bytes` and closes the stream normally.
pub async fn reply_and_close(mut stream: TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
}

/// Closes `stream` with an RST.
pub fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
