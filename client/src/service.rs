//! Reading the payment service for the judge: its payments by id
//! (`GET /payments?after_id=`), by key (`POST /payments/lookup`), the newest
//! id (a search with one-row pages, never `/stats`, which may scan the whole
//! ledger), and `/stats` for the scenario runner. Every request is retried
//! with bounded backoff until the reader's deadline; what cannot be read
//! completely and correctly is [`Inconclusive`], never guessed. Pages are
//! parsed in place (strings borrowed from the answer) and handed over one
//! payment at a time, so nothing is kept per payment here.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tokio::time::Instant;

use eo_core::wire::{AuditReport, AuditVerdict};
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
/// The largest answer read: a full page of the largest payment documents
/// (a 255-byte key, two 64-byte accounts) is under 600 KB.
const ANSWER_BYTES_MAX: usize = 4 << 20;
/// Probes for the newest id at most: 64 gallop past any `i64`, 64 bisect it.
const PROBES_MAX: u32 = 130;

/// A payment as the service documents it (`GET /payments/{id}`), its strings
/// borrowed from the answer when they hold no escapes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServicePayment<'a> {
    pub id: i64,
    #[serde(borrow)]
    pub src: Cow<'a, str>,
    #[serde(borrow)]
    pub dest: Cow<'a, str>,
    pub amount_minor: i64,
    #[serde(borrow, deserialize_with = "optional_text")]
    pub idempotency_key: Option<Cow<'a, str>>,
}

impl ServicePayment<'_> {
    /// The same payment owning its strings, to keep beyond the answer it was read from.
    pub fn to_owned_payment(&self) -> ServicePayment<'static> {
        ServicePayment {
            id: self.id,
            src: Cow::Owned(self.src.to_string()),
            dest: Cow::Owned(self.dest.to_string()),
            amount_minor: self.amount_minor,
            idempotency_key: self.idempotency_key.as_ref().map(|k| Cow::Owned(k.to_string())),
        }
    }
}

/// `Option<Cow<str>>` that borrows (serde's own only borrows a bare `Cow`).
fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

/// The part of `/stats` the client and the scenario judge read. Every field
/// is required: a missing one is an unreadable answer, not a zero.
pub type ServiceStats = eo_core::wire::LedgerStats;

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    payments: Vec<ServicePayment<'a>>,
    next_after_id: Option<i64>,
}

#[derive(Serialize)]
struct LookupBody<'a> {
    keys: &'a [String],
    after_id: i64,
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

pub(crate) fn inconclusive(reason: String) -> Inconclusive {
    Inconclusive { reason }
}

/// An audit report as the judge reads it: the recomputed figures, every
/// invariant by name, and whether the maintained figures agree.
fn proof_from_audit(report: AuditReport) -> Result<ServiceStats, Inconclusive> {
    if report.verdict == AuditVerdict::Inconclusive {
        return Err(inconclusive(format!(
            "the audit could not see the whole ledger: {}",
            report.findings.join("; ")
        )));
    }
    let figures = report.recomputed;
    let count =
        |n: i64, what: &str| u64::try_from(n).map_err(|_| inconclusive(format!("the audit reports {n} {what}")));
    let recomputed = report.invariants;
    let invariants = [
        ("one_payment_per_key", recomputed.one_payment_per_key),
        ("balances_conserved", recomputed.balances_conserved),
        ("balances_match_ledger", recomputed.balances_match_ledger),
        ("maintained_figures_match_ledger", report.verdict == AuditVerdict::Agree),
    ];
    Ok(ServiceStats {
        payments: count(figures.payments, "payments")?,
        last_payment_id: figures.last_payment_id,
        total_amount_minor: figures.total_amount_minor,
        duplicate_keys: count(figures.duplicate_keys, "duplicate keys")?,
        invariants: invariants
            .into_iter()
            .map(|(name, holds)| (name.to_owned(), holds))
            .collect(),
    })
}

/// Why one try of a request failed.
pub(crate) enum Failure {
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
            .tcp_nodelay(true)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(ServiceReader {
            http,
            base: service.trim_end_matches('/').to_owned(),
            deadline: Instant::now() + budget,
            requests: AtomicU64::new(0),
        })
    }

    /// Time left before the reading deadline.
    pub(crate) fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// HTTP requests sent so far, retries included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub async fn stats(&self) -> Result<ServiceStats, Inconclusive> {
        let url = format!("{}/stats", self.base);
        self.with_retries("GET /stats", || self.http.get(&url), |body| parse_json(body))
            .await
    }

    /// `GET path` until a 2xx whose body parses as `T`: other services this
    /// project reads (the receipts service) are read the same way.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Inconclusive> {
        let url = format!("{}{path}", self.base);
        self.with_retries(&format!("GET {path}"), || self.http.get(&url), |body| parse_json(body))
            .await
    }

    /// `POST path` with a JSON `body` until a 2xx answer that `accept` takes.
    pub(crate) async fn post_json<T>(
        &self,
        path: &str,
        body: Vec<u8>,
        what: &str,
        accept: impl FnMut(&[u8]) -> Result<T, Failure>,
    ) -> Result<T, Inconclusive> {
        let url = format!("{}{path}", self.base);
        let request = || {
            let post = self.http.post(&url);
            post.header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        self.with_retries(what, request, accept).await
    }

    /// The full proof: `GET /audit` recomputes the ledger's figures and
    /// invariants from every payment (O(n), unlike `/stats`, which shows the
    /// figures maintained at each write) and compares the two. Returned in
    /// the shape of `/stats`, recomputed: the invariants the audit checked,
    /// plus `maintained_figures_match_ledger` (what `/stats` shows equals the
    /// recomputation). An audit that could not see everything is
    /// [`Inconclusive`].
    pub async fn audit(&self) -> Result<ServiceStats, Inconclusive> {
        let url = format!("{}/audit", self.base);
        let report: AuditReport = self
            .with_retries("GET /audit", || self.http.get(&url), |body| parse_json(body))
            .await?;
        proof_from_audit(report)
    }

    /// The newest payment id (0 if there is none), without `/stats`: each
    /// probe is one `GET /payments?after_id=X&limit=1`, an index seek on the
    /// service. `lo` is an id believed to exist (or 0) and `guess` where the
    /// newest probably is; from there it gallops up and bisects: a few probes
    /// when the guess is right, about 2 log2(n) at worst. With payments being
    /// made meanwhile, the answer is an id that was the newest at some moment
    /// of the search, or one of those made since.
    pub async fn last_id(&self, lo: i64, guess: i64) -> Result<i64, Inconclusive> {
        let mut probes = 0u32;
        let mut lo = lo.max(0);
        match self.probe(lo, &mut probes).await? {
            None => return Ok(lo),
            Some(id) => lo = id,
        }
        // No payment has an id above `hi`, once it is known.
        let mut hi = None;
        if guess.saturating_sub(1) > lo {
            match self.probe(guess - 1, &mut probes).await? {
                Some(id) => lo = id,
                None => hi = Some(guess - 1),
            }
        }
        let mut step = 0i64;
        while hi.is_none() {
            let x = lo.saturating_add(step);
            match self.probe(x, &mut probes).await? {
                Some(id) => (lo, step) = (id, step.saturating_mul(2).saturating_add(1)),
                None => hi = Some(x),
            }
        }
        while let Some(h) = hi
            && lo < h
        {
            let mid = lo + (h - lo) / 2;
            match self.probe(mid, &mut probes).await? {
                Some(id) => lo = id,
                None => hi = Some(mid),
            }
        }
        Ok(lo)
    }

    /// The first payment id above `after`, if any.
    async fn probe(&self, after: i64, probes: &mut u32) -> Result<Option<i64>, Inconclusive> {
        *probes += 1;
        if *probes > PROBES_MAX {
            return Err(inconclusive(format!(
                "the newest payment id was not found in {PROBES_MAX} reads: ids keep moving"
            )));
        }
        let mut first = None;
        self.page(after, 1, |p| {
            first = first.or(Some(p.id));
        })
        .await?;
        Ok(first)
    }

    /// One page of the payments with ids above `after` (at most
    /// [`PAGE_ROWS_MAX`]), each handed to `each`; returns where the next page
    /// starts, if more may follow.
    pub async fn page_after(
        &self,
        after: i64,
        each: impl FnMut(&ServicePayment<'_>) + Send,
    ) -> Result<Option<i64>, Inconclusive> {
        self.page(after, PAGE_ROWS_MAX, each).await
    }

    /// The payments with ids in `(after, last]` (`last - after` at most
    /// [`PAGE_ROWS_MAX`]): one page holds them all, since ids are unique
    /// integers. Neighbouring ranges can be read at the same time.
    pub async fn id_range(
        &self,
        after: i64,
        last: i64,
        mut each: impl FnMut(&ServicePayment<'_>) + Send,
    ) -> Result<(), Inconclusive> {
        self.page(after, PAGE_ROWS_MAX, |p| {
            if p.id <= last {
                each(p);
            }
        })
        .await
        .map(|_| ())
    }

    async fn page(
        &self,
        after: i64,
        limit: usize,
        mut each: impl FnMut(&ServicePayment<'_>) + Send,
    ) -> Result<Option<i64>, Inconclusive> {
        let url = format!("{}/payments?after_id={after}&limit={limit}", self.base);
        let what = format!("GET /payments?after_id={after}&limit={limit}");
        let accept = |body: &[u8]| {
            let page: Page = parse_json(body)?;
            check_page(&page, after, limit, None).map_err(Failure::Definitive)?;
            page.payments.iter().for_each(&mut each);
            Ok(page.next_after_id)
        };
        self.with_retries(&what, || self.http.get(&url), accept).await
    }

    /// One page of the payments made under `key` (`GET /payments?key=`) with
    /// ids above `after`, each handed to `each`; returns where the next page
    /// starts, if more may follow. For a service without the batch lookup.
    pub async fn key_page(
        &self,
        key: &str,
        after: i64,
        mut each: impl FnMut(&ServicePayment<'_>) + Send,
    ) -> Result<Option<i64>, Inconclusive> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/payments", self.base),
            [("key", key), ("after_id", &after.to_string())],
        )
        .map_err(|e| inconclusive(format!("cannot build the URL for key {key:?}: {e}")))?;
        let asked = HashSet::from([key]);
        let what = format!("GET /payments?key={key}&after_id={after}");
        let accept = |bytes: &[u8]| {
            let page: Page = parse_json(bytes)?;
            check_page(&page, after, PAGE_ROWS_MAX, Some(&asked)).map_err(Failure::Definitive)?;
            page.payments.iter().for_each(&mut each);
            Ok(page.next_after_id)
        };
        self.with_retries(&what, || self.http.get(url.clone()), accept).await
    }

    /// One page of the payments made under one of `keys` (at most
    /// [`LOOKUP_KEYS_MAX`]) with ids above `after`, each handed to `each`;
    /// returns where the next page starts, if more may follow.
    pub async fn lookup_page(
        &self,
        keys: &[String],
        after: i64,
        mut each: impl FnMut(&ServicePayment<'_>) + Send,
    ) -> Result<Option<i64>, Inconclusive> {
        if keys.len() > LOOKUP_KEYS_MAX {
            return Err(inconclusive(format!("{} keys in one lookup", keys.len())));
        }
        let url = format!("{}/payments/lookup", self.base);
        let body = serde_json::to_vec(&LookupBody { keys, after_id: after })
            .map_err(|e| inconclusive(format!("cannot write a lookup: {e}")))?;
        let asked: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let what = format!("POST /payments/lookup ({} keys, after_id {after})", keys.len());
        let request = || {
            let post = self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json");
            post.body(body.clone())
        };
        let accept = |bytes: &[u8]| {
            let page: Page = parse_json(bytes)?;
            check_page(&page, after, PAGE_ROWS_MAX, Some(&asked)).map_err(Failure::Definitive)?;
            page.payments.iter().for_each(&mut each);
            Ok(page.next_after_id)
        };
        self.with_retries(&what, request, accept).await
    }

    /// Sends the request built by `request` until it answers a 2xx whose body
    /// `accept` takes, waiting between tries, within the deadline.
    async fn with_retries<T>(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
        mut accept: impl FnMut(&[u8]) -> Result<T, Failure>,
    ) -> Result<T, Inconclusive> {
        let mut delay = Duration::from_millis(RETRY_DELAY_MS_MIN);
        let mut tries = 0u32;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = left.min(Duration::from_millis(REQUEST_TIMEOUT_MS));
            tries += 1;
            let answer = self.once(request().timeout(timeout)).await;
            let why = match answer.and_then(|body| accept(&body)) {
                Ok(value) => return Ok(value),
                Err(Failure::Definitive(why)) => return Err(inconclusive(format!("{what}: {why}"))),
                Err(Failure::Transient(why)) => why,
            };
            if Instant::now() + delay >= self.deadline {
                return Err(inconclusive(format!(
                    "{what}: {why} (tried {tries} times until the reading deadline)"
                )));
            }
            tracing::debug!(what, why, "retrying a read of the service");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(RETRY_DELAY_MS_MAX));
        }
    }

    /// One try: the body of a 2xx answer, read to its end (at most
    /// [`ANSWER_BYTES_MAX`]).
    async fn once(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, Failure> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut response = request
            .send()
            .await
            .map_err(|e| Failure::Transient(format!("no answer from {} ({e})", self.base)))?;
        let status = response.status();
        // 408, 429 and 409 (another audit runs) are worth another try.
        if status.is_client_error() && status != 408 && status != 429 && status != 409 {
            return Err(Failure::Definitive(format!("the service answered {status}")));
        }
        if !status.is_success() {
            return Err(Failure::Transient(format!("the service answered {status}")));
        }
        let expected = response.content_length().unwrap_or(0) as usize;
        let mut body = Vec::with_capacity(expected.min(ANSWER_BYTES_MAX));
        let cut = |e: reqwest::Error| Failure::Transient(format!("the answer was cut off ({e})"));
        while let Some(chunk) = response.chunk().await.map_err(cut)? {
            if body.len() + chunk.len() > ANSWER_BYTES_MAX {
                return Err(Failure::Definitive(format!("an answer over {ANSWER_BYTES_MAX} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

pub(crate) fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::Transient(format!("a malformed answer ({e})")))
}

/// A page must move forward: at most `limit` payments, ids ascending and
/// above the cursor, a next cursor beyond them, and (for a lookup) only the
/// keys asked for. Anything else could make the judge miss payments or loop.
fn check_page(page: &Page, after: i64, limit: usize, asked: Option<&HashSet<&str>>) -> Result<(), String> {
    let broken = |why: String| Err(format!("the answer breaks the service's contract: {why}"));
    if page.payments.len() > limit {
        return broken(format!("{} payments in a page of at most {limit}", page.payments.len()));
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

/// URLs in one `--target` list at most: more replicas than one load balancer
/// in front of a workshop's laptop would ever have; a longer list is a mistake.
pub const TARGETS_MAX: usize = 64;

/// Checks a `--target` list: one URL, or several separated by commas (the
/// replicas a load balancer would spread attempts over), each as
/// [`parse_http_url`] wants it, none empty and none twice.
pub fn parse_http_urls(text: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() > TARGETS_MAX {
        return Err(format!("{} URLs given; at most {TARGETS_MAX}", parts.len()));
    }
    let mut urls: Vec<String> = Vec::with_capacity(parts.len());
    for (n, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(format!(
                "{text:?}: URL {} of the list is empty; separate URLs with one comma, like \
                 http://127.0.0.1:8081,http://127.0.0.1:8082",
                n + 1
            ));
        }
        let url = parse_http_url(part)?;
        if urls.contains(&url) {
            return Err(format!("{text:?}: {url} is listed twice"));
        }
        urls.push(url);
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_lists_are_checked_url_by_url() {
        let two = parse_http_urls("http://127.0.0.1:1, http://127.0.0.1:2/").unwrap();
        assert_eq!(two, vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(parse_http_urls("http://a:1").unwrap(), vec!["http://a:1"]);
        for (bad, why) in [
            ("http://a:1,,http://a:2", "URL 2 of the list is empty"),
            ("http://a:1,", "URL 2 of the list is empty"),
            ("http://a:1,a:2", "did you mean http://a:2?"),
            ("http://a:1,http://a:1/", "listed twice"),
        ] {
            let error = parse_http_urls(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
        let many = vec!["http://a:1"; TARGETS_MAX + 1].join(",");
        assert!(parse_http_urls(&many).unwrap_err().contains("at most"));
    }

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

    fn page(ids: &[i64], next: Option<i64>) -> Page<'static> {
        Page {
            payments: ids
                .iter()
                .map(|&id| ServicePayment {
                    id,
                    src: "a".into(),
                    dest: "b".into(),
                    amount_minor: 1,
                    idempotency_key: Some(format!("k{id}").into()),
                })
                .collect(),
            next_after_id: next,
        }
    }

    #[test]
    fn pages_that_do_not_move_forward_are_refused() {
        assert!(check_page(&page(&[3, 4], None), 2, 2, None).is_ok());
        assert!(check_page(&page(&[3, 3], None), 2, 2, None).is_err());
        assert!(check_page(&page(&[2], None), 2, 2, None).is_err());
        assert!(check_page(&page(&[3], Some(2)), 2, 2, None).is_err());
        let asked = HashSet::from(["k3"]);
        assert!(check_page(&page(&[3], None), 0, 1, Some(&asked)).is_ok());
        assert!(check_page(&page(&[4], None), 0, 1, Some(&asked)).is_err());
        assert!(
            check_page(&page(&[3, 4], None), 2, 1, None).is_err(),
            "more than the limit"
        );
    }
}
