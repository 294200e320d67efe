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
use crate::proxy::{self, DataPlane, ProxyShared, Running, Upstream};
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

/// A validated create request.
struct NewProxy {
    name: String,
    listen: String,
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
        AppState {
            inner: Arc::new(Inner {
                plane: Arc::new(DataPlane {
                    seed: config.seed,
                    allow_remote: config.allow_remote,
                    dial_timeout: config.dial_timeout,
                    idle_timeout: config.idle_timeout,
                    permits: Arc::new(Semaphore::new(config.connections_count_max)),
                }),
                registry: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The seed of every decision of this process.
    pub fn seed(&self) -> u64 {
        self.inner.plane.seed
    }

    fn validate(&self, value: Value) -> Result<NewProxy, ApiError> {
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
        Ok(NewProxy {
            name,
            listen: body.listen.unwrap_or_default(),
            upstream,
            target,
            enabled: body.enabled.unwrap_or(true),
            toxics,
        })
    }

    async fn resolve(&self, listen: &str) -> Result<SocketAddr, ApiError> {
        proxy::resolve_listen(listen, self.inner.plane.allow_remote, self.inner.plane.dial_timeout).await
    }

    /// Starts `entry` on its listen address; on success `listen` becomes the
    /// real bound address (port 0 resolved), as toxiproxy echoes it.
    async fn start_entry(&self, entry: &mut ProxyEntry) -> Result<(), ApiError> {
        if entry.running.is_some() {
            return Ok(());
        }
        let addr = self.resolve(&entry.listen).await?;
        let running = proxy::start(
            addr,
            entry.target.clone(),
            entry.shared.clone(),
            self.inner.plane.clone(),
        )
        .await
        .map_err(|e| ApiError::Internal(format!("listen tcp {addr}: {e}")))?;
        entry.listen = running.addr.to_string();
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
    async fn insert_new(
        &self,
        registry: &mut BTreeMap<String, ProxyEntry>,
        new: NewProxy,
    ) -> Result<ProxyView, ApiError> {
        if registry.len() >= PROXIES_COUNT_MAX {
            return Err(ApiError::BadRequest(format!(
                "too many proxies: at most {PROXIES_COUNT_MAX}"
            )));
        }
        let mut entry = ProxyEntry {
            listen: new.listen,
            upstream: new.upstream,
            target: new.target,
            enabled: false,
            shared: ProxyShared::new(new.name.clone(), &new.toxics),
            toxics: new.toxics,
            running: None,
        };
        if new.enabled {
            self.start_entry(&mut entry).await?;
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
        let new = self.validate(body)?;
        let mut registry = self.inner.registry.lock().await;
        if registry.contains_key(&new.name) {
            return Err(ApiError::Conflict("proxy already exists"));
        }
        self.insert_new(&mut registry, new).await
    }

    /// `GET /proxies/{p}`.
    pub async fn get(&self, name: &str) -> Result<ProxyView, ApiError> {
        let registry = self.inner.registry.lock().await;
        let entry = registry.get(name).ok_or(ApiError::NotFound("proxy not found"))?;
        Ok(entry.view(name))
    }

    /// Whether `listen` names the address `entry` is (or would be) bound to.
    async fn same_listen(&self, entry: &ProxyEntry, listen: &str) -> Result<bool, ApiError> {
        let wanted = self.resolve(listen).await?;
        let current = match &entry.running {
            Some(r) => r.addr,
            None => match self.resolve(&entry.listen).await {
                Ok(a) => a,
                Err(_) => return Ok(false),
            },
        };
        Ok(wanted == current)
    }

    /// `PATCH|POST /proxies/{p}`: merge, restart on an address change, then
    /// apply `enabled`. A failed rebind leaves the proxy disabled with the
    /// new listen stored (toxiproxy behaves the same).
    pub async fn update(&self, name: &str, body: Value) -> Result<ProxyView, ApiError> {
        let body: ProxyUpdateBody = serde_json::from_value(body).map_err(ApiError::bad_body)?;
        let mut registry = self.inner.registry.lock().await;
        let entry = registry.get_mut(name).ok_or(ApiError::NotFound("proxy not found"))?;
        let listen = body.listen.unwrap_or_else(|| entry.listen.clone());
        let upstream = body
            .upstream
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| entry.upstream.clone());
        let enabled = body.enabled.unwrap_or(entry.enabled);
        let target = proxy::parse_upstream(&upstream, self.inner.plane.allow_remote)?;
        // Validate the new listen before touching anything.
        self.resolve(&listen).await?;
        let changed = upstream != entry.upstream || !self.same_listen(entry, &listen).await?;
        if changed {
            Self::stop_entry(entry).await;
            entry.listen = listen;
            entry.upstream = upstream;
            entry.target = target;
        }
        if enabled {
            self.start_entry(entry).await?;
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
        let mut news = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let new = self.validate(item).map_err(|e| fail(e.at_proxy(i + 1)))?;
            self.resolve(&new.listen).await.map_err(|e| fail(e.at_proxy(i + 1)))?;
            news.push(new);
        }
        let mut registry = self.inner.registry.lock().await;
        let mut done = Vec::with_capacity(news.len());
        for new in news {
            let partial = |error, done: &Vec<ProxyView>| PopulateError {
                error,
                proxies: Some(done.clone()),
            };
            if let Some(entry) = registry.get_mut(&new.name) {
                let same = new.upstream == entry.upstream
                    && self
                        .same_listen(entry, &new.listen)
                        .await
                        .map_err(|e| partial(e, &done))?;
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
            let view = self
                .insert_new(&mut registry, new)
                .await
                .map_err(|e| partial(e, &done))?;
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
            if let Err(e) = self.start_entry(entry).await {
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
