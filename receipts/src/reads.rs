//! The read routes, each on a reader connection on the blocking pool:
//! `GET /receipts/{id}`, `GET /receipts` (pages, by payment id),
//! `POST /receipts/lookup` (reconciliation) and `GET /stats` (one row).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use eo_core::wire::PAGE_ROWS_MAX;
use serde::{Deserialize, Serialize};

use crate::api::{AppState, json};
use crate::error::{ApiError, Problem};
use crate::event::{Body, Lookup};
use crate::stats;
use crate::store::{self, EventReceipts, Receipt};

pub(crate) async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let missing = || ApiError::new(Problem::NotFound, format!("there is no receipt {id:?}"));
    let number: i64 = id.parse().map_err(|_| missing())?;
    let receipt = state.0.readers.read(move |conn| store::receipt(conn, number)).await?;
    let receipt = receipt.ok_or_else(missing)?;
    Ok(json(
        StatusCode::OK,
        serde_json::to_string(&receipt).unwrap_or_default(),
    ))
}

/// `GET /receipts?payment_id=&after=&limit=`; every parameter optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    payment_id: Option<i64>,
    after: Option<i64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct Page {
    receipts: Vec<Receipt>,
    /// Where the next page starts (`after=`), when this one is full.
    next_after: Option<i64>,
}

pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let invalid = |detail: String| ApiError::new(Problem::InvalidQuery, detail);
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(PAGE_ROWS_MAX);
    if after < 0 {
        return Err(invalid(format!("after must be 0 or more, got {after}")));
    }
    if !(1..=PAGE_ROWS_MAX).contains(&limit) {
        return Err(invalid(format!("limit must be 1 to {PAGE_ROWS_MAX}, got {limit}")));
    }
    if let Some(pid) = query.payment_id.filter(|pid| *pid < 1) {
        return Err(invalid(format!("payment_id must be at least 1, got {pid}")));
    }
    let payment_id = query.payment_id;
    let receipts = state
        .0
        .readers
        .read(move |conn| store::page(conn, payment_id, after, limit))
        .await?;
    let next_after = match receipts.len() == limit {
        true => receipts.last().map(|r| r.id),
        false => None,
    };
    let page = Page { receipts, next_after };
    Ok(json(StatusCode::OK, serde_json::to_string(&page).unwrap_or_default()))
}

#[derive(Serialize)]
struct LookupAnswer {
    /// One per event id asked, in the order asked.
    events: Vec<EventReceipts>,
}

pub(crate) async fn lookup(
    State(state): State<AppState>,
    body: Result<Body<Lookup>, ApiError>,
) -> Result<Response, ApiError> {
    let Body(Lookup { event_ids }) = body?;
    let events = state
        .0
        .readers
        .read(move |conn| store::lookup(conn, &event_ids))
        .await?;
    let answer = LookupAnswer { events };
    Ok(json(StatusCode::OK, serde_json::to_string(&answer).unwrap_or_default()))
}

pub(crate) async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let totals = state.0.readers.read(|conn| store::totals(conn)).await?;
    let document = stats::document(&totals, state.0.config.dedup, &state.0.counters);
    Ok(json(
        StatusCode::OK,
        serde_json::to_string(&document).unwrap_or_default(),
    ))
}
