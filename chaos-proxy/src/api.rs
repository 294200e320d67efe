//! The HTTP control API: toxiproxy v2's routes, status codes and bodies, plus
//! a few extensions (`/proxies/{p}/stats`, `/chaos`, `/metrics`).
//!
//! Bodies are read as raw bytes and decoded as JSON whatever the
//! Content-Type says (the workshop's `toxi.http` sends none), with a size
//! cap and an overall request deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::Value;

use crate::config::{API_BODY_BYTES_MAX, API_REQUEST_TIMEOUT_MS};
use crate::error::ApiError;
use crate::state::{AppState, PopulateError};

/// The toxiproxy version whose API this server speaks.
pub const TOXIPROXY_API_VERSION: &str = "2.12.0";

/// The router, apart from any socket so that tests can drive it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/proxies", get(list_proxies).post(create_proxy))
        .route("/populate", post(populate))
        .route(
            "/proxies/{proxy}",
            get(get_proxy)
                .post(update_proxy)
                .patch(update_proxy)
                .delete(delete_proxy),
        )
        .route("/proxies/{proxy}/toxics", get(list_toxics).post(create_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(get_toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(delete_toxic),
        )
        .route("/proxies/{proxy}/stats", get(get_stats).delete(delete_stats))
        .route("/reset", post(reset))
        .route("/version", get(version))
        .route("/chaos", get(chaos_info))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(API_BODY_BYTES_MAX))
        .layer(middleware::from_fn(guard))
        .with_state(state)
}

/// Browser guard, request id, and the request deadline, for every route.
async fn guard(req: Request, next: Next) -> Response {
    static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);
    let id = REQUEST_IDS.fetch_add(1, Relaxed);
    let browser = req
        .headers()
        .get(header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().starts_with(b"Mozilla/"));
    let mut resp = if browser {
        // toxiproxy's CSRF guard: a web page must not drive the proxy.
        (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "User agent not allowed\n",
        )
            .into_response()
    } else {
        let deadline = Duration::from_millis(API_REQUEST_TIMEOUT_MS);
        match tokio::time::timeout(deadline, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{id:020}")) {
        resp.headers_mut().insert("x-toxiproxy-request-id", v);
    }
    resp
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

/// toxiproxy answers a wrong method with an empty 405.
async fn method_not_allowed() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

/// Compact JSON, `application/json`, no trailing newline (toxiproxy's shape).
fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::Internal(format!("encoding response: {e}")).into_response(),
    }
}

/// Decodes a request body as JSON regardless of its Content-Type.
fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("request body larger than {API_BODY_BYTES_MAX} bytes"))
        } else {
            ApiError::bad_body(e.body_text())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // Go's decoder says "EOF" here; clients only look at the status.
        return Err(ApiError::bad_body("EOF"));
    }
    serde_json::from_slice(&bytes).map_err(ApiError::bad_body)
}

type ApiResult = Result<Response, ApiError>;

async fn list_proxies(State(state): State<AppState>) -> Response {
    json(StatusCode::OK, &state.list().await)
}

async fn create_proxy(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let proxy = state.create(parse_body(body)?).await?;
    Ok(json(StatusCode::CREATED, &proxy))
}

async fn populate(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = match parse_body(body) {
        Ok(value) => state.populate(value).await,
        Err(error) => Err(PopulateError { error, proxies: None }),
    };
    match result {
        Ok(proxies) => {
            // A struct, not `json!`: a `Value` map would sort each proxy's
            // keys, unlike every other proxy object this API returns.
            #[derive(Serialize)]
            struct Body {
                proxies: Vec<crate::state::ProxyView>,
            }
            json(StatusCode::CREATED, &Body { proxies })
        }
        Err(PopulateError { error, proxies }) => {
            // populate's errors are JSON (not text/plain) and carry `proxies`.
            #[derive(Serialize)]
            struct Body<'a> {
                error: &'a str,
                status: u16,
                proxies: Option<Vec<crate::state::ProxyView>>,
            }
            let status = error.status();
            json(
                status,
                &Body {
                    error: error.message(),
                    status: status.as_u16(),
                    proxies,
                },
            )
        }
    }
}

async fn get_proxy(State(state): State<AppState>, Path(proxy): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, &state.get(&proxy).await?))
}

async fn update_proxy(
    State(state): State<AppState>,
    Path(proxy): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let view = state.update(&proxy, parse_body(body)?).await?;
    Ok(json(StatusCode::OK, &view))
}

async fn delete_proxy(State(state): State<AppState>, Path(proxy): Path<String>) -> ApiResult {
    state.delete(&proxy).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_toxics(State(state): State<AppState>, Path(proxy): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, &state.toxics(&proxy).await?))
}

async fn create_toxic(
    State(state): State<AppState>,
    Path(proxy): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    // toxiproxy checks the proxy before the body.
    state.get(&proxy).await?;
    let toxic = state.add_toxic(&proxy, parse_body(body)?).await?;
    // 200, not 201: toxiproxy's status for a new toxic.
    Ok(json(StatusCode::OK, &toxic))
}

async fn get_toxic(State(state): State<AppState>, Path((proxy, toxic)): Path<(String, String)>) -> ApiResult {
    Ok(json(StatusCode::OK, &state.toxic(&proxy, &toxic).await?))
}

async fn update_toxic(
    State(state): State<AppState>,
    Path((proxy, toxic)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    state.toxic(&proxy, &toxic).await?;
    let updated = state.update_toxic(&proxy, &toxic, parse_body(body)?).await?;
    Ok(json(StatusCode::OK, &updated))
}

async fn delete_toxic(State(state): State<AppState>, Path((proxy, toxic)): Path<(String, String)>) -> ApiResult {
    state.delete_toxic(&proxy, &toxic).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_stats(State(state): State<AppState>, Path(proxy): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, &state.stats(&proxy).await?))
}

async fn delete_stats(State(state): State<AppState>, Path(proxy): Path<String>) -> ApiResult {
    state.reset_stats(&proxy).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset(State(state): State<AppState>) -> ApiResult {
    state.reset().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `{"version": "2.12.0"}` + newline, exactly as toxiproxy writes it.
async fn version() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        format!("{{\"version\": \"{TOXIPROXY_API_VERSION}\"}}\n"),
    )
        .into_response()
}

/// Extension: Prometheus text of every proxy's counters.
async fn metrics(State(state): State<AppState>) -> Response {
    match crate::metrics::render(&state.all_stats().await) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Extension: who we are and the seed to replay this run.
async fn chaos_info(State(state): State<AppState>) -> Response {
    let mut info = BTreeMap::new();
    info.insert("name", Value::from("chaos-proxy"));
    info.insert("version", Value::from(env!("CARGO_PKG_VERSION")));
    info.insert("toxiproxy_api", Value::from(TOXIPROXY_API_VERSION));
    info.insert("seed", Value::from(state.seed()));
    json(StatusCode::OK, &info)
}
