//! The control plane: the registry of proxies and every operation the API
//! offers on it, with toxiproxy's semantics.
//!
//! One async mutex serialises API mutations (so "create a proxy, then add its
//! toxic" can never race, toxiproxy #148). Host names are resolved before it
//! is taken; under it only binds (plain socket calls) and accept-loop stops
//! happen, never anything the data plane does: toxics reach connections
//! through `watch::Sender::send_replace`, which does not wait (toxiproxy #558
//! hangs because it waits on connections under a lock).
//!
//! Every change is prepared (all that can fail) before it is applied (see
//! `registry.rs`), so a failed create, update or populate changes nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use crate::config::{Config, PROXIES_COUNT_MAX, TOXICS_PER_PROXY_COUNT_MAX};
use crate::error::ApiError;
use crate::loops::{Node, edges, find_loop};
use crate::proxy::{self, DataPlane, Resolve, Upstream};
pub use crate::registry::ProxyView;
use crate::registry::{Listener, ProxyEntry, Settings, UpstreamSpec, listing};
use crate::stats::StatsView;
use crate::toxic::{Toxic, check_name};

/// Shared handle on the whole server state (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    plane: Arc<DataPlane>,
    registry: Mutex<BTreeMap<String, ProxyEntry>>,
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
    settings: Settings,
    toxics: Vec<Toxic>,
}

/// One populate item, prepared: what committing it does.
enum Step {
    /// The proxy exists with the same addresses: kept untouched (its toxics
    /// replaced when the item brings some).
    Keep(NewProxy),
    /// A new proxy, or a brand-new one in place of one whose addresses
    /// differ, on the prepared listener.
    Put(NewProxy, Listener),
}

/// Outcome of a populate that failed: the error and, only if a commit
/// failed part-way (see [`ProxyEntry::apply`]), the proxies done before it.
pub struct PopulateError {
    pub error: ApiError,
    pub proxies: Option<Vec<ProxyView>>,
}

fn not_found() -> ApiError {
    ApiError::NotFound("proxy not found")
}

/// Refuses a change after which a proxy's upstream leads back to it, alone
/// or through other proxies of this server (see `loops.rs`). `changed`: the
/// proxies the change sets, each with the address it will listen on.
/// Disabled proxies count: enabling one must not close a loop unchecked.
fn check_loops(
    registry: &BTreeMap<String, ProxyEntry>,
    changed: &[(&str, &Settings, SocketAddr)],
) -> Result<(), ApiError> {
    let mut nodes: Vec<Node<'_>> = registry
        .iter()
        .filter(|(name, _)| !changed.iter().any(|(c, _, _)| c == name))
        .map(|(name, entry)| Node {
            name,
            listen: entry.settings.listen_addr,
            upstreams: &entry.settings.upstream.addrs,
        })
        .collect();
    let first_changed = nodes.len();
    nodes.extend(changed.iter().map(|(name, settings, listen)| Node {
        name,
        listen: *listen,
        upstreams: &settings.upstream.addrs,
    }));
    let edges = edges(&nodes);
    for (i, (name, settings, listen)) in changed.iter().enumerate() {
        let Some(path) = find_loop(&nodes, &edges, first_changed + i) else {
            continue;
        };
        let why = if path == format!("{name} -> {name}") {
            format!(
                "proxy loop: the upstream {} of {name} is its own listen address {listen}",
                settings.upstream.text
            )
        } else {
            format!("proxy loop: {path} (each upstream is the next proxy's listen address)")
        };
        return Err(ApiError::BadRequest(why));
    }
    Ok(())
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
        check_name("proxy", &name)?;
        let upstream = body
            .upstream
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ApiError::BadRequest("missing required field: upstream".into()))?;
        let upstream = self.upstream(upstream).await?;
        let toxics = Self::toxics_of(body.toxics.unwrap_or_default())?;
        let listen = body.listen.unwrap_or_default();
        let listen_addr = self.resolve(&listen).await?;
        let settings = Settings {
            listen,
            listen_addr,
            upstream,
            enabled: body.enabled.unwrap_or(true),
        };
        Ok(NewProxy { name, settings, toxics })
    }

    /// The toxics a create body brings (an extension), validated.
    fn toxics_of(bodies: Vec<Value>) -> Result<Vec<Toxic>, ApiError> {
        if bodies.len() > TOXICS_PER_PROXY_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many toxics: at most {TOXICS_PER_PROXY_COUNT_MAX} per proxy"
            )));
        }
        let mut toxics: Vec<Toxic> = Vec::with_capacity(bodies.len());
        for t in bodies {
            let toxic = Toxic::from_create_json(t)?;
            if toxics.iter().any(|x| x.name == toxic.name) {
                return Err(ApiError::Conflict("toxic already exists"));
            }
            toxics.push(toxic);
        }
        Ok(toxics)
    }

    /// Parses an upstream and resolves it for the loop check (before the
    /// registry lock). A host name that does not resolve now is accepted,
    /// as toxiproxy does: it is resolved again at every dial.
    async fn upstream(&self, text: String) -> Result<UpstreamSpec, ApiError> {
        let target = proxy::parse_upstream(&text, self.inner.plane.allow_remote)?;
        let addrs = match &target {
            Upstream::Addr(addr) => vec![*addr],
            Upstream::Host(host, port) => proxy::lookup(&self.inner.plane, host, *port).await.unwrap_or_default(),
        };
        Ok(UpstreamSpec { text, target, addrs })
    }

    async fn resolve(&self, listen: &str) -> Result<SocketAddr, ApiError> {
        proxy::resolve_listen(listen, &self.inner.plane).await
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
        if registry.len() >= PROXIES_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many proxies: at most {PROXIES_COUNT_MAX}"
            )));
        }
        let mut entry = ProxyEntry::new(&new.name, &new.settings, new.toxics);
        let listener = entry.prepare(&new.settings)?;
        check_loops(&registry, &[(&new.name, &new.settings, listener.addr(&new.settings))])?;
        entry.apply(new.settings, listener, &self.inner.plane).await?;
        let view = entry.view(&new.name);
        registry.insert(new.name, entry);
        Ok(view)
    }

    /// `GET /proxies/{p}`.
    pub async fn get(&self, name: &str) -> Result<ProxyView, ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(name).ok_or_else(not_found)?;
        Ok(entry.view(name))
    }

    /// `PATCH|POST /proxies/{p}`: merge; on an address change, restart;
    /// then apply `enabled`. Unlike toxiproxy (which leaves the proxy
    /// disabled with the new listen stored), a failed rebind changes nothing:
    /// the new socket is bound before the old run stops.
    pub async fn update(&self, name: &str, body: Value) -> Result<ProxyView, ApiError> {
        let body: ProxyUpdateBody = serde_json::from_value(body).map_err(ApiError::bad_body)?;
        // Resolve before locking: a slow lookup must not stall the API.
        let listen = match body.listen {
            Some(listen) => {
                let addr = self.resolve(&listen).await?;
                Some((listen, addr))
            }
            None => None,
        };
        let upstream = match body.upstream.filter(|u| !u.is_empty()) {
            Some(upstream) => Some(self.upstream(upstream).await?),
            None => None,
        };
        let mut registry = self.inner.registry.lock().await;
        let entry = registry.get(name).ok_or_else(not_found)?;
        let next = entry.merged(listen, upstream, body.enabled);
        let listener = entry.prepare(&next)?;
        check_loops(&registry, &[(name, &next, listener.addr(&next))])?;
        let entry = registry.get_mut(name).ok_or_else(not_found)?;
        entry.apply(next, listener, &self.inner.plane).await?;
        Ok(entry.view(name))
    }

    /// `DELETE /proxies/{p}`: stop and forget (toxics and stats included).
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut registry = self.inner.registry.lock().await;
        let mut entry = registry.remove(name).ok_or_else(not_found)?;
        entry.stop().await;
        Ok(())
    }

    /// `POST /populate` (and `--config`), all or nothing: every item is
    /// validated and resolved, then every listener it needs is bound, and
    /// only then is anything changed. An existing proxy with the same listen
    /// and upstream is kept untouched (toxics included, unless the item
    /// brings its own); a different one is replaced by a new proxy.
    pub async fn populate(&self, body: Value) -> Result<Vec<ProxyView>, PopulateError> {
        let fail = |error| PopulateError { error, proxies: None };
        let news = self.prepare_all(body).await.map_err(fail)?;
        let mut registry = self.inner.registry.lock().await;
        let steps = Self::plan(&registry, news).map_err(fail)?;
        self.commit(&mut registry, steps).await
    }

    /// Validates and resolves every populate item (before locking).
    async fn prepare_all(&self, body: Value) -> Result<Vec<NewProxy>, ApiError> {
        let Value::Array(items) = body else {
            return Err(ApiError::bad_body("expected a JSON array of proxies"));
        };
        if items.len() > PROXIES_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many proxies: at most {PROXIES_COUNT_MAX}"
            )));
        }
        let mut news: Vec<NewProxy> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let new = self.prepare(item).await.map_err(|e| e.at_proxy(i + 1))?;
            // Which of the two would win is a guess; refuse instead.
            if news.iter().any(|n| n.name == new.name) {
                let twice = format!("proxy name {:?} given twice", new.name);
                return Err(ApiError::BadRequest(twice).at_proxy(i + 1));
            }
            news.push(new);
        }
        Ok(news)
    }

    /// What populate will do per item, with every listener it needs bound:
    /// all that can fail, with nothing changed yet. On an error the sockets
    /// bound so far are dropped (closed).
    fn plan(registry: &BTreeMap<String, ProxyEntry>, news: Vec<NewProxy>) -> Result<Vec<Step>, ApiError> {
        let created = news.iter().filter(|n| !registry.contains_key(&n.name)).count();
        if registry.len() + created > PROXIES_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many proxies: at most {PROXIES_COUNT_MAX}"
            )));
        }
        let mut steps = Vec::with_capacity(news.len());
        for (i, new) in news.into_iter().enumerate() {
            let step = match registry.get(&new.name) {
                Some(entry) if !entry.moves(&new.settings) => Step::Keep(new),
                Some(entry) => {
                    let listener = entry.prepare(&new.settings).map_err(|e| e.at_proxy(i + 1))?;
                    Step::Put(new, listener)
                }
                None => {
                    let fresh = ProxyEntry::new(&new.name, &new.settings, Vec::new());
                    let listener = fresh.prepare(&new.settings).map_err(|e| e.at_proxy(i + 1))?;
                    Step::Put(new, listener)
                }
            };
            steps.push(step);
        }
        let changed: Vec<(&str, &Settings, SocketAddr)> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Put(new, listener) => Some((new.name.as_str(), &new.settings, listener.addr(&new.settings))),
                Step::Keep(_) => None,
            })
            .collect();
        check_loops(registry, &changed)?;
        Ok(steps)
    }

    /// Applies populate's prepared steps in item order.
    async fn commit(
        &self,
        registry: &mut BTreeMap<String, ProxyEntry>,
        steps: Vec<Step>,
    ) -> Result<Vec<ProxyView>, PopulateError> {
        let mut done = Vec::with_capacity(steps.len());
        for step in steps {
            let (name, applied) = match step {
                Step::Keep(new) => {
                    if let Some(entry) = registry.get_mut(&new.name)
                        && !new.toxics.is_empty()
                    {
                        entry.set_toxics(new.toxics);
                    }
                    (new.name, Ok(()))
                }
                Step::Put(new, listener) => {
                    let entry = registry
                        .entry(new.name.clone())
                        .or_insert_with(|| ProxyEntry::new(&new.name, &new.settings, Vec::new()));
                    entry.renew(&new.name, new.toxics);
                    let applied = entry.apply(new.settings, listener, &self.inner.plane).await;
                    (new.name, applied)
                }
            };
            if let Err(error) = applied {
                return Err(PopulateError {
                    error,
                    proxies: Some(done),
                });
            }
            if let Some(entry) = registry.get(&name) {
                done.push(entry.view(&name));
            }
        }
        Ok(done)
    }

    /// `POST /reset`: enable every proxy, remove every toxic, and (an
    /// extension) zero the stats and connection indexes so that a run after
    /// a reset replays like a fresh process with the same seed. Every proxy
    /// is tried (each start changes nothing when it fails); the first
    /// failure is reported.
    pub async fn reset(&self) -> Result<(), ApiError> {
        let mut registry = self.inner.registry.lock().await;
        let mut first_error = None;
        for entry in registry.values_mut() {
            if let Err(e) = entry.start(&self.inner.plane).await {
                first_error.get_or_insert(e);
            }
            entry.set_toxics(Vec::new());
            entry.reset_stats();
        }
        first_error.map_or(Ok(()), Err)
    }

    /// `GET /proxies/{p}/toxics`.
    pub async fn toxics(&self, proxy: &str) -> Result<Vec<Toxic>, ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(proxy).ok_or_else(not_found)?;
        Ok(listing(&entry.toxics))
    }

    /// `POST /proxies/{p}/toxics`. Live connections pick the toxic up at
    /// their next event.
    pub async fn add_toxic(&self, proxy: &str, body: Value) -> Result<Toxic, ApiError> {
        let mut registry = self.inner.registry.lock().await;
        let entry = registry.get_mut(proxy).ok_or_else(not_found)?;
        let toxic = Toxic::from_create_json(body)?;
        if entry.toxics.iter().any(|t| t.name == toxic.name) {
            return Err(ApiError::Conflict("toxic already exists"));
        }
        if entry.toxics.len() >= TOXICS_PER_PROXY_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many toxics: at most {TOXICS_PER_PROXY_COUNT_MAX} per proxy"
            )));
        }
        let mut toxics = entry.toxics.clone();
        toxics.push(toxic.clone());
        entry.set_toxics(toxics);
        Ok(toxic)
    }

    /// `GET /proxies/{p}/toxics/{t}`.
    pub async fn toxic(&self, proxy: &str, name: &str) -> Result<Toxic, ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(proxy).ok_or_else(not_found)?;
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
        let entry = registry.get_mut(proxy).ok_or_else(not_found)?;
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
        let entry = registry.get_mut(proxy).ok_or_else(not_found)?;
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
        let entry = registry.get(proxy).ok_or_else(not_found)?;
        Ok(entry.shared.stats.view(proxy, self.seed()))
    }

    /// Every proxy's counters, by name (for `/metrics`).
    pub async fn all_stats(&self) -> Vec<StatsView> {
        let registry = self.inner.registry.lock().await;
        registry
            .iter()
            .map(|(name, entry)| entry.shared.stats.view(name, self.seed()))
            .collect()
    }

    /// `DELETE /proxies/{p}/stats` (extension): zero the counters and the
    /// connection index, keep the toxics.
    pub async fn reset_stats(&self, proxy: &str) -> Result<(), ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(proxy).ok_or_else(not_found)?;
        entry.reset_stats();
        Ok(())
    }

    /// Stops every proxy (process shutdown).
    pub async fn shutdown(&self) {
        let mut registry = self.inner.registry.lock().await;
        for entry in registry.values_mut() {
            entry.stop().await;
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

    /// A resolver that answers 127.0.0.1 for every name at once.
    struct Loopback;

    impl Resolve for Loopback {
        fn lookup(&self, _host: &str, port: u16) -> LookupFuture {
            Box::pin(async move { Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]) })
        }
    }

    /// An upstream host name that resolves to the proxy's own listen
    /// address is a loop too (names other than the aliases are resolved
    /// only with --allow-remote).
    #[tokio::test]
    async fn an_upstream_name_resolving_to_the_proxy_itself_is_refused() {
        let mut config = Config::new(1);
        config.allow_remote = true;
        let state = AppState::with_resolver(&config, Arc::new(Loopback));
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = free.local_addr().expect("addr").port();
        drop(free);
        let body = serde_json::json!({
            "name": "me",
            "listen": format!("127.0.0.1:{port}"),
            "upstream": format!("me.example:{port}"),
        });
        let e = state.create(body).await.expect_err("refused");
        assert_eq!(e.status().as_u16(), 400);
        assert!(e.message().starts_with("proxy loop"), "{e}");
        assert!(state.list().await.is_empty());
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
