//! Reading the payment service for the judge: `/stats`, its payments by id
//! (`GET /payments?after_id=`) and by key (`POST /payments/lookup`). Every
//! request is retried with bounded backoff until the reader's deadline; what
//! cannot be read completely and correctly is [`Inconclusive`], never guessed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use eo_core::wire::{LOOKUP_KEYS_MAX, PAGE_ROWS_MAX};
/// One request may take this long before it counts as failed (and is retried).
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The first wait before retrying a failed read; doubled each time up to the max.
const RETRY_DELAY_MS_MIN: u64 = 50;
/// The longest wait between two tries of a read: the service's restart time scale.
const RETRY_DELAY_MS_MAX: u64 = 2_000;
/// Default time the judge may spend reading (and re-reading) the service:
/// a million payments take a few seconds, so this only ends real outages.
pub const RECONCILE_DEADLINE_MS_DEFAULT: u64 = 120_000;
/// Pages read at most per request chain, and id ranges per window: a service
/// that keeps answering full pages cannot keep the judge for ever (10 million
/// payments).
pub const PAGES_MAX: usize = 10_000;

/// A payment as the service documents it (`GET /payments/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServicePayment {
    pub id: i64,
    pub src: String,
    pub dest: String,
    pub amount_minor: i64,
    pub idempotency_key: Option<String>,
}

/// The part of `/stats` the client and the scenario judge read. Every field
/// is required: a missing one is an unreadable answer, not a zero.
pub type ServiceStats = eo_core::wire::LedgerStats;

#[derive(Deserialize)]
struct Page {
    payments: Vec<ServicePayment>,
    next_after_id: Option<i64>,
}

/// Why the judge cannot say whether money moved exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inconclusive {
    pub reason: String,
}

impl std::fmt::Display for Inconclusive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Inconclusive {}

fn inconclusive(reason: String) -> Inconclusive {
    Inconclusive { reason }
}

/// Why one try of a request failed.
enum Failure {
    /// Worth another try: no connection, a timeout, a 5xx, a cut-off body.
    Transient(String),
    /// Another try would get the same: a 4xx, an answer that breaks the contract.
    Definitive(String),
}

/// Reads the service until `deadline`, counting requests.
pub struct ServiceReader {
    http: reqwest::Client,
    base: String,
    deadline: Instant,
    requests: AtomicU64,
}

impl ServiceReader {
    /// A reader for `service` (`http://host:port`) that gives up `budget` from now.
    pub fn new(service: &str, budget: Duration) -> anyhow::Result<ServiceReader> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .retry(reqwest::retry::never())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(ServiceReader {
            http,
            base: service.trim_end_matches('/').to_owned(),
            deadline: Instant::now() + budget,
            requests: AtomicU64::new(0),
        })
    }

    /// HTTP requests sent so far, retries included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub async fn stats(&self) -> Result<ServiceStats, Inconclusive> {
        let url = format!("{}/stats", self.base);
        self.with_retries("GET /stats", || self.http.get(&url)).await
    }

    /// Every payment with an id above `after_id`, in id order, page by page,
    /// each handed to `each` (which may refuse to hold more).
    pub async fn payments_after(
        &self,
        after_id: i64,
        mut each: impl FnMut(ServicePayment) -> Result<(), Inconclusive>,
    ) -> Result<(), Inconclusive> {
        let mut after = after_id;
        for _ in 0..PAGES_MAX {
            let page = self.page_after(after).await?;
            page.payments.into_iter().try_for_each(&mut each)?;
            match page.next_after_id {
                Some(next) => after = next,
                None => return Ok(()),
            }
        }
        Err(inconclusive(format!(
            "the service holds more than {} payments after id {after_id}",
            PAGES_MAX * PAGE_ROWS_MAX
        )))
    }

    /// The payments with ids in `(after_id, after_id + PAGE_ROWS_MAX]`: one
    /// page holds them all, since ids are unique integers. Pages of
    /// neighbouring ranges can be read at the same time.
    pub async fn id_range(&self, after_id: i64) -> Result<Vec<ServicePayment>, Inconclusive> {
        let last = after_id.saturating_add(PAGE_ROWS_MAX as i64);
        let mut page = self.page_after(after_id).await?;
        page.payments.retain(|p| p.id <= last);
        Ok(page.payments)
    }

    async fn page_after(&self, after: i64) -> Result<Page, Inconclusive> {
        let url = format!("{}/payments?after_id={after}&limit={PAGE_ROWS_MAX}", self.base);
        let what = format!("GET /payments?after_id={after}");
        let page: Page = self.with_retries(&what, || self.http.get(&url)).await?;
        check_page(&what, &page, after, None)?;
        Ok(page)
    }

    /// Every payment made under one of `keys` (at most [`LOOKUP_KEYS_MAX`]),
    /// all pages of them.
    pub async fn lookup(&self, keys: &[String]) -> Result<Vec<ServicePayment>, Inconclusive> {
        if keys.len() > LOOKUP_KEYS_MAX {
            return Err(inconclusive(format!("{} keys in one lookup", keys.len())));
        }
        let url = format!("{}/payments/lookup", self.base);
        let asked: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let (mut after, mut found) = (0, Vec::new());
        for _ in 0..PAGES_MAX {
            let body = serde_json::json!({ "keys": keys, "after_id": after });
            let what = format!("POST /payments/lookup ({} keys, after_id {after})", keys.len());
            let page: Page = self.with_retries(&what, || self.http.post(&url).json(&body)).await?;
            check_page(&what, &page, after, Some(&asked))?;
            found.extend(page.payments);
            match page.next_after_id {
                Some(next) => after = next,
                None => return Ok(found),
            }
        }
        Err(inconclusive(format!(
            "more than {} payments under {} keys",
            PAGES_MAX * PAGE_ROWS_MAX,
            keys.len()
        )))
    }

    /// Sends the request built by `request` until it answers a 2xx with the
    /// expected JSON, waiting between tries, within the deadline.
    async fn with_retries<T: DeserializeOwned>(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, Inconclusive> {
        let mut delay = Duration::from_millis(RETRY_DELAY_MS_MIN);
        let mut tries = 0u32;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = left.min(Duration::from_millis(REQUEST_TIMEOUT_MS));
            tries += 1;
            let why = match self.once(request().timeout(timeout)).await {
                Ok(value) => return Ok(value),
                Err(Failure::Definitive(why)) => return Err(inconclusive(format!("{what}: {why}"))),
                Err(Failure::Transient(why)) => why,
            };
            if Instant::now() + delay >= self.deadline {
                return Err(inconclusive(format!(
                    "{what}: {why} (tried {tries} times until the reconciliation deadline)"
                )));
            }
            tracing::debug!(what, why, "retrying a read of the service");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(RETRY_DELAY_MS_MAX));
        }
    }

    async fn once<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, Failure> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Transient(format!("no answer from {} ({e})", self.base)))?;
        let status = response.status();
        if status.is_client_error() && status != 408 && status != 429 {
            return Err(Failure::Definitive(format!("the service answered {status}")));
        }
        if !status.is_success() {
            return Err(Failure::Transient(format!("the service answered {status}")));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::Transient(format!("the answer was cut off ({e})")))?;
        serde_json::from_slice(&body).map_err(|e| Failure::Transient(format!("a malformed answer ({e})")))
    }
}

/// A page must move forward: ids ascending and above the cursor, a next
/// cursor beyond it, and (for a lookup) only the keys asked for. Anything
/// else could make the judge miss payments or loop.
fn check_page(what: &str, page: &Page, after: i64, asked: Option<&HashSet<&str>>) -> Result<(), Inconclusive> {
    let broken = |why: String| {
        Err(inconclusive(format!(
            "{what}: the answer breaks the service's contract: {why}"
        )))
    };
    if page.payments.len() > PAGE_ROWS_MAX {
        return broken(format!("{} payments in one page", page.payments.len()));
    }
    let mut last = after;
    for p in &page.payments {
        if p.id <= last {
            return broken(format!("payment id {} after {last}", p.id));
        }
        last = p.id;
        if let Some(asked) = asked
            && !p.idempotency_key.as_deref().is_some_and(|k| asked.contains(k))
        {
            return broken(format!("payment {} has a key that was not asked for", p.id));
        }
    }
    match page.next_after_id {
        Some(next) if next < last || next <= after => broken(format!("next_after_id {next} does not move past {last}")),
        _ => Ok(()),
    }
}

/// Checks a `--target` or `--service` value: an `http://` URL with a host
/// (and perhaps a port and a path). The error says how to fix it.
pub fn parse_http_url(text: &str) -> Result<String, String> {
    let url = match reqwest::Url::parse(text) {
        Ok(url) => url,
        Err(_) if !text.contains("://") => {
            return Err(format!("{text:?} is not a URL: did you mean http://{text}?"));
        }
        Err(e) => return Err(format!("{text:?} is not a URL ({e})")),
    };
    match url.scheme() {
        "http" => {}
        "https" => return Err(format!("{text:?}: this client speaks plain http only (no TLS)")),
        // `localhost:8080` parses as scheme `localhost`.
        _ if !text.contains("://") => return Err(format!("{text:?} is not an http URL: did you mean http://{text}?")),
        other => return Err(format!("{text:?}: the scheme must be http, not {other}")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host: write it like http://127.0.0.1:8080"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{text:?}: give only http://host:port (and a path), without query or credentials"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_scheme_are_refused_with_the_fix() {
        for (bad, fix) in [
            ("127.0.0.1:8888", "did you mean http://127.0.0.1:8888?"),
            ("localhost:8080", "did you mean http://localhost:8080?"),
            ("ftp://127.0.0.1", "must be http"),
            ("https://127.0.0.1", "plain http only"),
            ("http://", "not a URL"),
            ("http://127.0.0.1:8080/?a=1", "without query"),
        ] {
            let error = parse_http_url(bad).expect_err(bad);
            assert!(error.contains(fix), "{bad}: {error}");
        }
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert_eq!(parse_http_url("http://localhost").as_deref(), Ok("http://localhost"));
    }

    fn page(ids: &[i64], next: Option<i64>) -> Page {
        Page {
            payments: ids
                .iter()
                .map(|&id| ServicePayment {
                    id,
                    src: "a".into(),
                    dest: "b".into(),
                    amount_minor: 1,
                    idempotency_key: Some(format!("k{id}")),
                })
                .collect(),
            next_after_id: next,
        }
    }

    #[test]
    fn pages_that_do_not_move_forward_are_refused() {
        assert!(check_page("t", &page(&[3, 4], None), 2, None).is_ok());
        assert!(check_page("t", &page(&[3, 3], None), 2, None).is_err());
        assert!(check_page("t", &page(&[2], None), 2, None).is_err());
        assert!(check_page("t", &page(&[3], Some(2)), 2, None).is_err());
        let asked = HashSet::from(["k3"]);
        assert!(check_page("t", &page(&[3], None), 0, Some(&asked)).is_ok());
        assert!(check_page("t", &page(&[4], None), 0, Some(&asked)).is_err());
    }
}
