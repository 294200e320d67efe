//! The control plane: the registry of proxies and every operation the API
//! offers on it, with toxiproxy's semantics.
//!
//! One async mutex serialises API mutations (so "create a proxy, then add its
//! toxic" can never race, toxiproxy #148). It is held only across binds and
//! accept-loop stops, never across anything the data plane does: toxics
//! reach connections through `watch::Sender::send_replace`, which does not
//! wait (toxiproxy #558 hangs because it waits on connections under a lock).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use crate::config::{Config, NAME_BYTES_MAX, PROXIES_COUNT_MAX, TOXICS_PER_PROXY_COUNT_MAX};
use crate::error::ApiError;
use crate::proxy::{self, DataPlane, ProxyShared, Resolve, Running, Upstream};
use crate::stats::StatsView;
use crate::toxic::{Direction, Toxic};

/// Shared handle on the whole server state (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    plane: Arc<DataPlane>,
    registry: Mutex<BTreeMap<String, ProxyEntry>>,
}

struct ProxyEntry {
    /// As given, until the proxy is started; then the real bound address.
    listen: String,
    /// `listen` resolved (when the request came, before taking the lock);
    /// the real bound address once started.
    listen_addr: SocketAddr,
    upstream: String,
    target: Upstream,
    enabled: bool,
    /// Creation order across both directions.
    toxics: Vec<Toxic>,
    shared: Arc<ProxyShared>,
    running: Option<Running>,
}

/// A proxy as the API shows it (toxiproxy's keys, in its order).
#[derive(Serialize, Clone, Debug)]
pub struct ProxyView {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
    pub toxics: Vec<Toxic>,
}

/// A proxy create (or populate item) body. `toxics` is an extension.
#[derive(Deserialize)]
struct ProxyBody {
    name: Option<String>,
    listen: Option<String>,
    upstream: Option<String>,
    enabled: Option<bool>,
    toxics: Option<Vec<Value>>,
}

/// A proxy update body; `name` and `toxics` are ignored (the Go client posts
/// the whole proxy back, toxics included).
#[derive(Deserialize)]
struct ProxyUpdateBody {
    listen: Option<String>,
    upstream: Option<String>,
    enabled: Option<bool>,
}

/// A validated create request, its addresses resolved.
struct NewProxy {
    name: String,
    listen: String,
    listen_addr: SocketAddr,
    upstream: String,
    target: Upstream,
    enabled: bool,
    toxics: Vec<Toxic>,
}

/// Toxics in toxiproxy's listing order: upstream ones first, then
/// downstream ones, each in creation order.
fn listing(toxics: &[Toxic]) -> Vec<Toxic> {
    let mut out: Vec<Toxic> = toxics
        .iter()
        .filter(|t| t.direction == Direction::Upstream)
        .cloned()
        .collect();
    out.extend(toxics.iter().filter(|t| t.direction == Direction::Downstream).cloned());
    out
}

impl ProxyEntry {
    fn view(&self, name: &str) -> ProxyView {
        ProxyView {
            name: name.to_owned(),
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            enabled: self.enabled,
            toxics: listing(&self.toxics),
        }
    }
}

/// Outcome of a populate that failed part-way: the error and the proxies
/// created or kept before it.
pub struct PopulateError {
    pub error: ApiError,
    pub proxies: Option<Vec<ProxyView>>,
}

impl AppState {
    pub fn new(config: &Config) -> AppState {
        Self::with_resolver(config, Arc::new(proxy::SystemResolver))
    }

    /// A state whose host-name lookups go through `resolver`.
    pub(crate) fn with_resolver(config: &Config, resolver: Arc<dyn Resolve>) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                plane: Arc::new(DataPlane {
                    seed: config.seed,
                    allow_remote: config.allow_remote,
                    dial_timeout: config.dial_timeout,
                    idle_timeout: config.idle_timeout,
                    permits: Arc::new(Semaphore::new(config.connections_count_max)),
                    resolver,
                }),
                registry: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The seed of every decision of this process.
    pub fn seed(&self) -> u64 {
        self.inner.plane.seed
    }

    /// Validates a create body and resolves its addresses. Called before the
    /// registry lock is taken: a slow lookup must not stall the API.
    async fn prepare(&self, value: Value) -> Result<NewProxy, ApiError> {
        let body: ProxyBody = serde_json::from_value(value).map_err(ApiError::bad_body)?;
        let name = body
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::BadRequest("missing required field: name".into()))?;
        if name.len() > NAME_BYTES_MAX {
            return Err(ApiError::BadRequest(format!(
                "proxy name longer than {NAME_BYTES_MAX} bytes"
            )));
        }
        let upstream = body
            .upstream
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ApiError::BadRequest("missing required field: upstream".into()))?;
        let target = proxy::parse_upstream(&upstream, self.inner.plane.allow_remote)?;
        let mut toxics: Vec<Toxic> = Vec::new();
        for t in body.toxics.unwrap_or_default() {
            let toxic = Toxic::from_create_json(t)?;
            if toxics.iter().any(|x| x.name == toxic.name) {
                return Err(ApiError::Conflict("toxic already exists"));
            }
            toxics.push(toxic);
        }
        if toxics.len() > TOXICS_PER_PROXY_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many toxics: at most {TOXICS_PER_PROXY_COUNT_MAX} per proxy"
            )));
        }
        let listen = body.listen.unwrap_or_default();
        let listen_addr = self.resolve(&listen).await?;
        Ok(NewProxy {
            name,
            listen,
            listen_addr,
            upstream,
            target,
            enabled: body.enabled.unwrap_or(true),
            toxics,
        })
    }

    async fn resolve(&self, listen: &str) -> Result<SocketAddr, ApiError> {
        proxy::resolve_listen(listen, &self.inner.plane).await
    }

    /// Starts `entry` on its resolved listen address (a bind, nothing to
    /// wait for); on success `listen` becomes the real bound address (port 0
    /// resolved), as toxiproxy echoes it.
    fn start_entry(&self, entry: &mut ProxyEntry) -> Result<(), ApiError> {
        if entry.running.is_some() {
            return Ok(());
        }
        let bound = proxy::bind(entry.listen_addr)?;
        let running = proxy::start(
            bound,
            entry.target.clone(),
            entry.shared.clone(),
            self.inner.plane.clone(),
        );
        entry.listen = running.addr.to_string();
        entry.listen_addr = running.addr;
        entry.running = Some(running);
        entry.enabled = true;
        Ok(())
    }

    async fn stop_entry(entry: &mut ProxyEntry) {
        if let Some(running) = entry.running.take() {
            running.stop().await;
        }
        entry.enabled = false;
    }

    /// Creates (and, if enabled, starts) a validated proxy and inserts it.
    fn insert_new(&self, registry: &mut BTreeMap<String, ProxyEntry>, new: NewProxy) -> Result<ProxyView, ApiError> {
        if registry.len() >= PROXIES_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many proxies: at most {PROXIES_COUNT_MAX}"
            )));
        }
        let mut entry = ProxyEntry {
            listen: new.listen,
            listen_addr: new.listen_addr,
            upstream: new.upstream,
            target: new.target,
            enabled: false,
            shared: ProxyShared::new(new.name.clone(), &new.toxics),
            toxics: new.toxics,
            running: None,
        };
        if new.enabled {
            self.start_entry(&mut entry)?;
        }
        let view = entry.view(&new.name);
        registry.insert(new.name, entry);
        Ok(view)
    }

    /// `GET /proxies`.
    pub async fn list(&self) -> BTreeMap<String, ProxyView> {
        let registry = self.inner.registry.lock().await;
        registry.iter().map(|(n, e)| (n.clone(), e.view(n))).collect()
    }

    /// `POST /proxies`.
    pub async fn create(&self, body: Value) -> Result<ProxyView, ApiError> {
        let new = self.prepare(body).await?;
        let mut registry = self.inner.registry.lock().await;
        if registry.contains_key(&new.name) {
            return Err(ApiError::Conflict("proxy already exists"));
        }
        self.insert_new(&mut registry, new)
    }

    /// `GET /proxies/{p}`.
    pub async fn get(&self, name: &str) -> Result<ProxyView, ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(name).ok_or(ApiError::NotFound("proxy not found"))?;
        Ok(entry.view(name))
    }

    /// Whether `wanted` is the address `entry` is (or would be) bound to.
    fn same_listen(entry: &ProxyEntry, wanted: SocketAddr) -> bool {
        let current = entry.running.as_ref().map_or(entry.listen_addr, |r| r.addr);
        wanted == current
    }

    /// `PATCH|POST /proxies/{p}`: merge, restart on an address change, then
    /// apply `enabled`. A failed rebind leaves the proxy disabled with the
    /// new listen stored (toxiproxy behaves the same).
    pub async fn update(&self, name: &str, body: Value) -> Result<ProxyView, ApiError> {
        let body: ProxyUpdateBody = serde_json::from_value(body).map_err(ApiError::bad_body)?;
        // Resolve before locking: a slow lookup must not stall the API.
        let wanted = match &body.listen {
            Some(listen) => Some((listen.clone(), self.resolve(listen).await?)),
            None => None,
        };
        let mut registry = self.inner.registry.lock().await;
        let entry = registry.get_mut(name).ok_or(ApiError::NotFound("proxy not found"))?;
        let (listen, listen_addr) = wanted.unwrap_or_else(|| (entry.listen.clone(), entry.listen_addr));
        let upstream = body
            .upstream
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| entry.upstream.clone());
        let enabled = body.enabled.unwrap_or(entry.enabled);
        let target = proxy::parse_upstream(&upstream, self.inner.plane.allow_remote)?;
        let changed = upstream != entry.upstream || !Self::same_listen(entry, listen_addr);
        if changed {
            Self::stop_entry(entry).await;
            entry.listen = listen;
            entry.listen_addr = listen_addr;
            entry.upstream = upstream;
            entry.target = target;
        }
        if enabled {
            self.start_entry(entry)?;
        } else {
            Self::stop_entry(entry).await;
        }
        Ok(entry.view(name))
    }

    /// `DELETE /proxies/{p}`: stop and forget (toxics and stats included).
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut registry = self.inner.registry.lock().await;
        let mut entry = registry.remove(name).ok_or(ApiError::NotFound("proxy not found"))?;
        Self::stop_entry(&mut entry).await;
        Ok(())
    }

    /// `POST /populate` (and `--config`): validates every item first; an
    /// existing proxy with the same listen and upstream is kept untouched
    /// (toxics included, unless the item brings its own), a different one is
    /// replaced.
    pub async fn populate(&self, body: Value) -> Result<Vec<ProxyView>, PopulateError> {
        let fail = |error| PopulateError { error, proxies: None };
        let Value::Array(items) = body else {
            return Err(fail(ApiError::bad_body("expected a JSON array of proxies")));
        };
        if items.len() > PROXIES_COUNT_MAX {
            return Err(fail(ApiError::BadRequest(format!(
                "too many proxies: at most {PROXIES_COUNT_MAX}"
            ))));
        }
        // Validate and resolve every item before locking.
        let mut news = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            news.push(self.prepare(item).await.map_err(|e| fail(e.at_proxy(i + 1)))?);
        }
        let mut registry = self.inner.registry.lock().await;
        let mut done = Vec::with_capacity(news.len());
        for new in news {
            let partial = |error, done: &Vec<ProxyView>| PopulateError {
                error,
                proxies: Some(done.clone()),
            };
            if let Some(entry) = registry.get_mut(&new.name) {
                let same = new.upstream == entry.upstream && Self::same_listen(entry, new.listen_addr);
                if same {
                    if !new.toxics.is_empty() {
                        entry.toxics = new.toxics;
                        entry.shared.publish(&entry.toxics);
                    }
                    done.push(entry.view(&new.name));
                    continue;
                }
                if let Some(mut old) = registry.remove(&new.name) {
                    Self::stop_entry(&mut old).await;
                }
            }
            let view = self.insert_new(&mut registry, new).map_err(|e| partial(e, &done))?;
            done.push(view);
        }
        Ok(done)
    }

    /// `POST /reset`: enable every proxy, remove every toxic, and (an
    /// extension) zero the stats and connection indexes so that a run after
    /// a reset replays like a fresh process with the same seed. Every proxy
    /// is tried; the first failure is reported.
    pub async fn reset(&self) -> Result<(), ApiError> {
        let mut registry = self.inner.registry.lock().await;
        let mut first_error = None;
        for entry in registry.values_mut() {
            if let Err(e) = self.start_entry(entry) {
                first_error.get_or_insert(e);
            }
            entry.toxics.clear();
            entry.shared.publish(&entry.toxics);
            Self::reset_stats_of(entry);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn reset_stats_of(entry: &ProxyEntry) {
        entry.shared.stats.reset();
        entry.shared.next_connection.store(0, Relaxed);
    }

    /// `GET /proxies/{p}/toxics`.
    pub async fn toxics(&self, proxy: &str) -> Result<Vec<Toxic>, ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(proxy).ok_or(ApiError::NotFound("proxy not found"))?;
        Ok(listing(&entry.toxics))
    }

    /// `POST /proxies/{p}/toxics`. Live connections pick the toxic up at
    /// their next event.
    pub async fn add_toxic(&self, proxy: &str, body: Value) -> Result<Toxic, ApiError> {
        let mut registry = self.inner.registry.lock().await;
        let entry = registry.get_mut(proxy).ok_or(ApiError::NotFound("proxy not found"))?;
        let toxic = Toxic::from_create_json(body)?;
        if entry.toxics.iter().any(|t| t.name == toxic.name) {
            return Err(ApiError::Conflict("toxic already exists"));
        }
        if entry.toxics.len() >= TOXICS_PER_PROXY_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many toxics: at most {TOXICS_PER_PROXY_COUNT_MAX} per proxy"
            )));
        }
        entry.toxics.push(toxic.clone());
        entry.shared.publish(&entry.toxics);
        Ok(toxic)
    }

    /// `GET /proxies/{p}/toxics/{t}`.
    pub async fn toxic(&self, proxy: &str, name: &str) -> Result<Toxic, ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(proxy).ok_or(ApiError::NotFound("proxy not found"))?;
        entry
            .toxics
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or(ApiError::NotFound("toxic not found"))
    }

    /// `PATCH|POST /proxies/{p}/toxics/{t}`: toxicity, attributes (merged)
    /// and scope; name, type and stream cannot change.
    pub async fn update_toxic(&self, proxy: &str, name: &str, body: Value) -> Result<Toxic, ApiError> {
        let mut registry = self.inner.registry.lock().await;
        let entry = registry.get_mut(proxy).ok_or(ApiError::NotFound("proxy not found"))?;
        let slot = entry
            .toxics
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or(ApiError::NotFound("toxic not found"))?;
        *slot = slot.updated(body)?;
        let toxic = slot.clone();
        entry.shared.publish(&entry.toxics);
        Ok(toxic)
    }

    /// `DELETE /proxies/{p}/toxics/{t}`. Never waits on connections.
    pub async fn delete_toxic(&self, proxy: &str, name: &str) -> Result<(), ApiError> {
        let mut registry = self.inner.registry.lock().await;
        let entry = registry.get_mut(proxy).ok_or(ApiError::NotFound("proxy not found"))?;
        let before = entry.toxics.len();
        entry.toxics.retain(|t| t.name != name);
        if entry.toxics.len() == before {
            return Err(ApiError::NotFound("toxic not found"));
        }
        entry.shared.publish(&entry.toxics);
        Ok(())
    }

    /// `GET /proxies/{p}/stats` (extension).
    pub async fn stats(&self, proxy: &str) -> Result<StatsView, ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(proxy).ok_or(ApiError::NotFound("proxy not found"))?;
        Ok(entry.shared.stats.view(proxy, self.seed()))
    }

    /// `DELETE /proxies/{p}/stats` (extension): zero the counters and the
    /// connection index, keep the toxics.
    pub async fn reset_stats(&self, proxy: &str) -> Result<(), ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(proxy).ok_or(ApiError::NotFound("proxy not found"))?;
        Self::reset_stats_of(entry);
        Ok(())
    }

    /// Stops every proxy (process shutdown).
    pub async fn shutdown(&self) {
        let mut registry = self.inner.registry.lock().await;
        for entry in registry.values_mut() {
            Self::stop_entry(entry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::proxy::LookupFuture;

    /// Bound on any awaited event in these tests.
    const HANG_GUARD: Duration = Duration::from_secs(10);

    /// A resolver whose lookups answer 127.0.0.1 only once released.
    struct GatedResolver {
        started: Arc<Notify>,
        release: Arc<Semaphore>,
    }

    impl Resolve for GatedResolver {
        fn lookup(&self, _host: &str, port: u16) -> LookupFuture {
            let (started, release) = (self.started.clone(), self.release.clone());
            Box::pin(async move {
                started.notify_one();
                let _permit = release.acquire().await;
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
            })
        }
    }

    async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(HANG_GUARD, f)
            .await
            .unwrap_or_else(|_| panic!("{what} took longer than {HANG_GUARD:?}"))
    }

    /// Serves the API of `state` on a real loopback socket.
    async fn serve(state: AppState) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, crate::api::app(state)).await });
        base
    }

    async fn call(http: reqwest::Client, method: &'static str, url: String, body: &'static str) -> u16 {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = http
            .request(method, url)
            .body(body.to_owned())
            .send()
            .await
            .expect("send");
        resp.status().as_u16()
    }

    /// A create and an update whose listen names a host are stuck in their
    /// lookups, and meanwhile every other API call answers: the registry
    /// lock is taken only after resolving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_lookup_does_not_hold_the_registry() {
        let started = Arc::new(Notify::new());
        let release = Arc::new(Semaphore::new(0));
        let mut config = Config::new(1);
        config.allow_remote = true;
        let resolver = GatedResolver {
            started: started.clone(),
            release: release.clone(),
        };
        let base = serve(AppState::with_resolver(&config, Arc::new(resolver))).await;
        let http = reqwest::Client::new();
        let a = r#"{"name":"a","listen":"127.0.0.1:0","upstream":"127.0.0.1:9"}"#;
        assert_eq!(call(http.clone(), "POST", format!("{base}/proxies"), a).await, 201);

        let b = r#"{"name":"b","listen":"slow.test:0","upstream":"127.0.0.1:9"}"#;
        let create = tokio::spawn(call(http.clone(), "POST", format!("{base}/proxies"), b));
        guard("create lookup", started.notified()).await;
        let update = tokio::spawn(call(
            http.clone(),
            "POST",
            format!("{base}/proxies/a"),
            r#"{"listen":"slow.test:0"}"#,
        ));
        guard("update lookup", started.notified()).await;

        let quick = [
            ("GET", "/proxies", ""),
            ("POST", "/proxies/a/toxics", r#"{"type":"latency"}"#),
            ("POST", "/proxies/a", r#"{"enabled":false}"#),
            ("POST", "/reset", ""),
        ];
        for (method, path, body) in quick {
            let status = guard(path, call(http.clone(), method, format!("{base}{path}"), body)).await;
            assert!(status < 300, "{method} {path}: {status}");
        }
        assert!(!create.is_finished() && !update.is_finished());
        release.add_permits(2);
        assert_eq!(guard("create", create).await.expect("create task"), 201);
        assert_eq!(guard("update", update).await.expect("update task"), 200);
    }
}
