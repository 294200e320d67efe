//! The read routes: one payment, pages of payments, lookups by key, and
//! `/stats` (one row of maintained figures). Every query runs on a reader
//! connection on the blocking pool.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::api::{AppState, json};
use crate::error::{ApiError, Problem};
use crate::extract::Body;
use crate::key;
use crate::lookup::{LOOKUP_ROWS_MAX, Lookup};
use crate::payment::Payment;
use crate::stats::StatsJson;
use crate::{outbox, store, totals};

/// Page size of `GET /payments` when none is asked for, and the largest allowed.
const PAGE_LIMIT_DEFAULT: usize = 100;
const PAGE_LIMIT_MAX: usize = 1000;

pub(crate) async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (db, outbox) = state
        .0
        .readers
        .read(|c| {
            // One snapshot for both rows.
            c.snapshot(|tx| Ok((totals::read(tx)?, outbox::figures(tx)?)))
        })
        .await?;
    let config = &state.0.config;
    let who = (config.dedup, config.notify, state.0.replica.to_string());
    let stats = StatsJson::new((&db, &outbox), &state.0.counters, who);
    Ok(json(StatusCode::OK, serde_json::to_string(&stats).unwrap_or_default()))
}

pub(crate) async fn get_payment(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(Problem::NotFound, format!("there is no payment {id:?}"));
    let Ok(number) = id.parse::<i64>() else {
        return Err(not_found());
    };
    match state.0.readers.read(move |c| store::payment(c, number)).await? {
        Some(payment) => Ok(json(StatusCode::OK, payment.to_json())),
        None => Err(not_found()),
    }
}

/// `GET /payments?after_id=&limit=&key=`, each parameter at most once.
#[derive(Default)]
struct PageQuery {
    after_id: Option<i64>,
    limit: Option<usize>,
    key: Option<String>,
}

impl PageQuery {
    fn parse(pairs: Vec<(String, String)>) -> Result<PageQuery, ApiError> {
        let invalid = |detail: String| ApiError::new(Problem::InvalidQuery, detail);
        let mut q = PageQuery::default();
        for (name, value) in pairs {
            let taken = match name.as_str() {
                "after_id" => {
                    let v = value.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                        invalid(format!("after_id must be a whole number >= 0, got {value:?}")).with_field("after_id")
                    })?;
                    q.after_id.replace(v).is_some()
                }
                "limit" => {
                    let v = value
                        .parse::<usize>()
                        .ok()
                        .filter(|v| (1..=PAGE_LIMIT_MAX).contains(v))
                        .ok_or_else(|| {
                            invalid(format!("limit must be between 1 and {PAGE_LIMIT_MAX}, got {value:?}"))
                                .with_field("limit")
                        })?;
                    q.limit.replace(v).is_some()
                }
                "key" => {
                    key::check(&value).map_err(|why| invalid(format!("key {why}")).with_field("key"))?;
                    q.key.replace(value).is_some()
                }
                other => {
                    return Err(invalid(format!(
                        "unknown parameter {other:?}; use after_id, limit or key"
                    )));
                }
            };
            if taken {
                return Err(invalid(format!("parameter {name} is given more than once")));
            }
        }
        Ok(q)
    }
}

pub(crate) async fn list_payments(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::new(Problem::InvalidQuery, format!("the query string cannot be read: {e}")))?;
    let q = PageQuery::parse(pairs)?;
    let (after_id, limit) = (q.after_id.unwrap_or(0), q.limit.unwrap_or(PAGE_LIMIT_DEFAULT));
    let page = state
        .0
        .readers
        .read(move |c| store::payments(c, after_id, limit, q.key.as_deref()))
        .await?;
    Ok(page_json(&page, limit))
}

/// A page of payments, each rendered as `GET /payments/{id}` renders it;
/// `next_after_id` is the last id when the page is full (more may follow).
fn page_json(page: &[Payment], limit: usize) -> Response {
    let next = match page.last() {
        Some(last) if page.len() == limit => last.id.to_string(),
        _ => "null".to_owned(),
    };
    let items: Vec<String> = page.iter().map(Payment::to_json).collect();
    json(
        StatusCode::OK,
        format!("{{\"payments\":[{}],\"next_after_id\":{next}}}", items.join(",")),
    )
}

/// `POST /payments/lookup`: the payments of many keys, paged by id.
pub(crate) async fn lookup(
    State(state): State<AppState>,
    Body(Lookup { keys, after_id }): Body<Lookup>,
) -> Result<Response, ApiError> {
    let page = state
        .0
        .readers
        .read(move |c| store::payments_by_keys(c, &keys, after_id, LOOKUP_ROWS_MAX))
        .await?;
    Ok(page_json(&page, LOOKUP_ROWS_MAX))
}
