//! Starting and stopping the pieces of a scenario: the payment service (in
//! this process, or as a supervised child process when it must be killed)
//! and the chaos proxy (in this process, driven through its HTTP API exactly
//! as toxiproxy's clients drive it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

use crate::catalog::{Scenario, Scope, Stream, ToxicSpec};

/// Bound on every wait for a piece to start, answer or stop.
pub const STEP_TIMEOUT_MS: u64 = 10_000;
/// How long a (re)started service may take to accept connections: a JVM
/// service started with `--service-cmd` takes seconds.
pub const SERVICE_START_MS_MAX: u64 = 60_000;
/// Interval of the bounded polls for a service to come up.
pub const POLL_MS: u64 = 20;
/// Restarts of a crashing service at most, so a service that crashes at once
/// on every start cannot loop for ever.
const RESTARTS_MAX: u64 = 200;

pub fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(STEP_TIMEOUT_MS))
        .build()
        .context("cannot build an HTTP client")
}

/// The running payment service.
pub struct Service {
    pub url: String,
    pub addr: SocketAddr,
    pub restarts: Arc<AtomicU64>,
    /// Asks the supervisor to kill the service (it then restarts it); none
    /// for a service in this process.
    pub(crate) restart: Option<Arc<Notify>>,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The flags of the service's child process: where it listens and stores,
/// then the lesson's settings with this life's seed and crash probability.
fn child_args(s: &Scenario, db: &Path, listen: SocketAddr, seed: u64, crash_p: f64) -> Vec<String> {
    let mut settings = s.service.clone();
    settings.seed = seed;
    settings.crash_after_commit = crash_p;
    let mut args = vec![
        "__serve-payment".to_owned(),
        "--listen".into(),
        listen.to_string(),
        "--db".into(),
        db.display().to_string(),
    ];
    args.extend(settings.to_args());
    args
}

impl Service {
    /// Runs the service in this process on a free port.
    pub async fn in_process(s: &Scenario, db: &Path) -> anyhow::Result<Service> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(payment_service::run(listener, s.service.config(db), async move {
            let _ = stopped.await;
        }));
        Ok(Service {
            url: format!("http://{addr}"),
            addr,
            restarts: Arc::new(AtomicU64::new(0)),
            restart: None,
            stop: Some(stop),
            task,
        })
    }

    /// Runs the service as a child process of `exe` (this program), restarted
    /// on the same port and database whenever it dies, until stopped.
    pub async fn supervised(exe: &Path, s: &Scenario, db: &Path, seed: u64, crash_p: f64) -> anyhow::Result<Service> {
        let first = start_child(exe, &child_args(s, db, "127.0.0.1:0".parse()?, seed, crash_p)).await?;
        let addr = first.1;
        let restarts = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let restart = Arc::new(Notify::new());
        let (exe, s, db, counter) = (exe.to_owned(), s.clone(), db.to_owned(), Arc::clone(&restarts));
        let kill = Arc::clone(&restart);
        let task = tokio::spawn(async move {
            let mut child = first.0;
            loop {
                tokio::select! {
                    // kill -9 on request; the arm below restarts it.
                    () = kill.notified() => drop(child.start_kill()),
                    status = child.wait() => {
                        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::debug!(?status, restart = n, "the service died; restarting it on the same database");
                        if n > RESTARTS_MAX {
                            bail!("the service died {n} times; giving up");
                        }
                        // A new seed per life, so each life crashes at a different payment.
                        child = start_child(&exe, &child_args(&s, &db, addr, seed.wrapping_add(n), crash_p)).await?.0;
                    }
                    _ = &mut stopped => {
                        let _ = child.start_kill();
                        let _ = tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), child.wait()).await;
                        return Ok(());
                    }
                }
            }
        });
        Ok(Service {
            url: format!("http://{addr}"),
            addr,
            restarts,
            restart: Some(restart),
            stop: Some(stop),
            task,
        })
    }

    /// Kills the service (kill -9) and returns once its restart, on the same
    /// address and database, accepts connections again.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let Some(kill) = &self.restart else {
            bail!("this service runs inside the scenario runner and cannot be killed");
        };
        let before = self.restarts.load(Ordering::Relaxed);
        kill.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SERVICE_START_MS_MAX);
        loop {
            let restarted = self.restarts.load(Ordering::Relaxed) > before;
            if restarted && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the service did not come back within {SERVICE_START_MS_MAX} ms after a restart");
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    pub async fn stats(&self) -> anyhow::Result<Value> {
        let response = http()?
            .get(format!("{}/stats", self.url))
            .send()
            .await
            .context("GET /stats")?;
        response.json().await.context("GET /stats is not JSON")
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        stop_task(self.stop, self.task, "the service").await
    }
}

/// Starts one child and reads the bound address from its first stdout line.
async fn start_child(exe: &Path, args: &[String]) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    // The child's logs go where the lesson's do (opening the file blocks).
    let stderr = tokio::task::spawn_blocking(crate::logs::child_stderr).await?;
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let line = tokio::time::timeout(
        Duration::from_millis(STEP_TIMEOUT_MS),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .context("the service child did not start in time")??
    .context("the service child exited before listening")?;
    let addr = line
        .rsplit("http://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .with_context(|| format!("unexpected first line from the service child: {line:?}"))?;
    Ok((child, addr))
}

/// The chaos proxy's control plane and the proxies of a scenario: one route
/// per replica of the service (one for most lessons), each with the lesson's
/// toxics.
pub struct Proxy {
    pub api: String,
    /// Where clients connect to the first route: `http://127.0.0.1:PORT`.
    pub url: String,
    /// Every route, in replica order (the first is `url`).
    pub urls: Vec<String>,
    /// The routes' proxy names: [`PROXY_NAME`], then `payment-2`, ...
    names: Vec<String>,
    /// The second hop's route, if the lesson has one.
    receipts_route: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub const PROXY_NAME: &str = "payment";

/// The proxy name of route `n` (from 0): the first keeps toxiproxy's
/// workshop name, so `explain`, the live page and the scripts find it.
fn route_name(n: usize) -> String {
    match n {
        0 => PROXY_NAME.to_owned(),
        n => format!("{PROXY_NAME}-{}", n + 1),
    }
}

impl Proxy {
    /// Starts the proxy API, creates the `payment` proxy in front of
    /// `upstream` and adds the scenario's toxics, all through the HTTP API.
    pub async fn start(s: &Scenario, upstream: SocketAddr, seed: u64) -> anyhow::Result<Proxy> {
        Proxy::start_routes(s, &[upstream], seed).await
    }

    /// [`Proxy::start`] with one route per upstream (replicas of the service).
    pub async fn start_routes(s: &Scenario, upstreams: &[SocketAddr], seed: u64) -> anyhow::Result<Proxy> {
        let mut proxy = Proxy::start_api(seed).await?;
        proxy.add_service_routes(s, upstreams).await?;
        Ok(proxy)
    }

    /// The proxy's API alone, without a route yet.
    pub async fn start_api(seed: u64) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let api = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(chaos_proxy::run(listener, chaos_proxy::Config::new(seed), async move {
            let _ = stopped.await;
        }));
        Ok(Proxy {
            api,
            url: String::new(),
            urls: Vec::new(),
            names: Vec::new(),
            receipts_route: None,
            stop: Some(stop),
            task,
        })
    }

    /// One route per replica of the service, each with the lesson's toxics.
    pub async fn add_service_routes(&mut self, s: &Scenario, upstreams: &[SocketAddr]) -> anyhow::Result<()> {
        for (n, upstream) in upstreams.iter().enumerate() {
            let name = route_name(n);
            let url = add_route(&self.api, &name, *upstream, (&s.proxy.toxics, &s.name)).await?;
            self.urls.push(url);
            self.names.push(name);
        }
        self.url = self
            .urls
            .first()
            .cloned()
            .context("a proxy needs at least one upstream")?;
        Ok(())
    }

    /// The second hop's route, in front of the receipts service, with the
    /// lesson's `receipts_proxy` toxics; returns where the service connects.
    pub async fn add_receipts_route(&mut self, s: &Scenario, upstream: SocketAddr) -> anyhow::Result<String> {
        let name = crate::second_hop::RECEIPTS_ROUTE;
        let url = add_route(&self.api, name, upstream, (&s.receipts_proxy.toxics, &s.name)).await?;
        self.receipts_route = Some(name.to_owned());
        Ok(url)
    }

    /// The routes' proxy names, in replica order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Adds a toxic (toxiproxy's JSON) to every route while it runs.
    pub async fn add_toxic(&self, toxic: Value) -> anyhow::Result<()> {
        for name in &self.names {
            let request = http()?.post(format!("{}/proxies/{name}/toxics", self.api)).json(&toxic);
            expect_ok(request.send().await, "add a toxic").await?;
        }
        Ok(())
    }

    pub async fn remove_toxic(&self, toxic: &str) -> anyhow::Result<()> {
        for name in &self.names {
            let request = http()?.delete(format!("{}/proxies/{name}/toxics/{toxic}", self.api));
            expect_ok(request.send().await, "remove a toxic").await?;
        }
        Ok(())
    }

    pub async fn set_enabled(&self, enabled: bool) -> anyhow::Result<()> {
        for name in &self.names {
            let request = http()?
                .post(format!("{}/proxies/{name}", self.api))
                .json(&json!({"enabled": enabled}));
            expect_ok(request.send().await, "enable or disable the proxy").await?;
        }
        Ok(())
    }

    /// Faults fired, summed per stream over every route: (upstream, downstream).
    pub async fn faults(&self) -> anyhow::Result<(u64, u64)> {
        let (mut up, mut down) = (0, 0);
        for name in &self.names {
            let (u, d) = self.route_faults(name).await?;
            up += u;
            down += d;
        }
        Ok((up, down))
    }

    /// Faults fired on the second hop's route, both ways; none without one.
    pub async fn receipts_faults(&self) -> anyhow::Result<Option<u64>> {
        match &self.receipts_route {
            Some(name) => self.route_faults(name).await.map(|(up, down)| Some(up + down)),
            None => Ok(None),
        }
    }

    async fn route_faults(&self, name: &str) -> anyhow::Result<(u64, u64)> {
        let request = http()?.get(format!("{}/proxies/{name}/stats", self.api));
        let stats: Value = expect_ok(request.send().await, "read proxy stats").await?;
        let (mut up, mut down) = (0, 0);
        for fault in stats["faults"].as_array().into_iter().flatten() {
            let count = fault["count"].as_u64().unwrap_or(0);
            match fault["stream"].as_str() {
                Some("upstream") => up += count,
                _ => down += count,
            }
        }
        Ok((up, down))
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        stop_task(self.stop, self.task, "the proxy").await
    }
}

/// Creates the proxy `name` in front of `upstream` with `toxics` (of the
/// lesson named), through the API at `api`; returns where clients connect.
async fn add_route(
    api: &str,
    name: &str,
    upstream: SocketAddr,
    (toxics, lesson): (&[ToxicSpec], &str),
) -> anyhow::Result<String> {
    let http = http()?;
    let created: Value = expect_ok(
        http.post(format!("{api}/proxies"))
            .json(&json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream.to_string(), "enabled": true}))
            .send()
            .await,
        "create the proxy",
    )
    .await?;
    let listen = created["listen"]
        .as_str()
        .context("the proxy did not say where it listens")?;
    for toxic in toxics {
        let body = json!({
            "type": toxic.kind,
            "stream": match toxic.stream { Stream::Upstream => "upstream", Stream::Downstream => "downstream" },
            "toxicity": toxic.toxicity,
            "attributes": toxic.attributes,
            "toxicity_scope": match toxic.scope { Scope::Connection => "connection", Scope::Request => "request" },
        });
        expect_ok(
            http.post(format!("{api}/proxies/{name}/toxics"))
                .json(&body)
                .send()
                .await,
            "add a toxic",
        )
        .await
        .with_context(|| format!("scenario {lesson}: toxic {body}"))?;
    }
    Ok(format!("http://{listen}"))
}

/// Signals a piece to stop and waits, bounded, for its task to finish.
async fn stop_task(
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    what: &str,
) -> anyhow::Result<()> {
    if let Some(stop) = stop {
        let _ = stop.send(());
    }
    tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), task)
        .await
        .with_context(|| format!("{what} did not stop in time"))?
        .with_context(|| format!("{what} task failed"))?
}

async fn expect_ok(response: reqwest::Result<reqwest::Response>, what: &str) -> anyhow::Result<Value> {
    let response = response.with_context(|| format!("cannot {what}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("cannot {what}: the proxy answered {status}: {body}");
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub fn scratch_dir(keep: Option<&Path>, name: &str) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    match keep {
        Some(root) => {
            let dir = root.join(name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            Ok((None, dir))
        }
        None => {
            let tmp = tempfile::Builder::new().prefix("scenario-").tempdir()?;
            let path = tmp.path().to_owned();
            Ok((Some(tmp), path))
        }
    }
}
