//! `spawn_proxy()` and the small servers and clients the tests use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use chaos_proxy::Config;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single awaited event; reaching it fails the test.
pub const HANG_GUARD: Duration = Duration::from_secs(10);

/// Awaits `f` or fails the test after [`HANG_GUARD`].
pub async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("hang guard: {what} took longer than {HANG_GUARD:?}"),
    }
}

/// A running chaos-proxy (API on a random loopback port).
pub struct TestProxy {
    pub api: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_proxy() -> TestProxy {
    spawn_proxy_with(Config::new(42)).await
}

pub async fn spawn_proxy_with(config: Config) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let api = listener.local_addr().expect("api addr");
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(chaos_proxy::run(listener, config, async {
        let _ = rx.await;
    }));
    TestProxy {
        api,
        http: reqwest::Client::builder().timeout(HANG_GUARD).build().expect("client"),
        stop: Some(stop),
        task: Some(task),
    }
}

/// A response: status, content type, raw body.
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    /// Sends a request with an optional raw body and no Content-Type.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        let resp = guard("api call", req.send()).await.expect("api call");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = guard("api body", resp.text()).await.expect("api body");
        Resp {
            status,
            content_type,
            body,
        }
    }

    /// Creates a proxy on a random port to `upstream`; returns its address.
    pub async fn create(&self, name: &str, upstream: SocketAddr) -> SocketAddr {
        let body = serde_json::json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream.to_string()});
        let r = self.call("POST", "/proxies", Some(&body.to_string())).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["listen"]
            .as_str()
            .expect("listen")
            .parse()
            .expect("listen addr")
    }

    /// Adds a toxic; asserts toxiproxy's 200.
    pub async fn toxic(&self, proxy: &str, body: Value) -> Value {
        let r = self
            .call("POST", &format!("/proxies/{proxy}/toxics"), Some(&body.to_string()))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    pub async fn stats(&self, proxy: &str) -> Value {
        let r = self.call("GET", &format!("/proxies/{proxy}/stats"), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// Stops the server and checks that it shut down cleanly and promptly.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            guard("shutdown", task)
                .await
                .expect("server task")
                .expect("server result");
        }
    }
}

/// An echo server that counts the bytes it received.
pub struct Echo {
    pub addr: SocketAddr,
    pub received: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
}

pub async fn spawn_echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let received = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let (r, c) = (received.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            r.fetch_add(n as u64, SeqCst);
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Echo {
        addr,
        received,
        connections,
    }
}

/// A real HTTP server (axum) that counts the requests it handled.
pub struct CountingHttp {
    pub addr: SocketAddr,
    pub handled: Arc<AtomicU64>,
}

pub async fn spawn_counting_http() -> CountingHttp {
    use axum::routing::post;
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let app = axum::Router::new().route(
        "/payments/",
        post(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, SeqCst);
                "paid"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let addr = listener.local_addr().expect("http addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    CountingHttp { addr, handled }
}

/// How a raw client's read side ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Clean EOF (FIN) after these bytes.
    Eof(Vec<u8>),
    /// Connection reset (RST) after these bytes.
    Reset(Vec<u8>),
}

/// Reads until EOF or error.
pub async fn read_to_end(s: &mut TcpStream) -> End {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match guard("read", s.read(&mut buf)).await {
            Ok(0) => return End::Eof(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return End::Reset(got),
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
}

/// Reads exactly `n` bytes.
pub async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    guard("read_exact", s.read_exact(&mut buf)).await.expect("read_exact");
    buf
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = guard("connect", TcpStream::connect(addr)).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// One HTTP/1.1 POST on a fresh connection (`Connection: close`), raw:
/// returns how the connection ended.
pub async fn raw_payment(proxy: SocketAddr) -> End {
    let mut s = connect(proxy).await;
    let body = r#"{"src":"bianca","dest":"marc","amount":1}"#;
    let req = format!(
        "POST /payments/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return End::Reset(Vec::new());
    }
    read_to_end(&mut s).await
}

/// True when the ended exchange carried a 200 answer.
pub fn is_ok(end: &End) -> bool {
    matches!(end, End::Eof(b) if b.starts_with(b"HTTP/1.1 200"))
}
