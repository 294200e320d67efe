//! The second hop's two other pieces: the after-commit call (`--notify
//! after-commit`, the lesson's dual write) and `POST /outbox/redeliver` (the
//! redelivery storm a broker causes after a consumer restart).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use eo_core::wire::PaymentEvent;
use serde::Deserialize;

use crate::api::{AppState, json};
use crate::config::{Config, NotifyMode};
use crate::create::submit;
use crate::error::{ApiError, Problem};
use crate::extract::{BODY_BYTES_MAX, Body, JsonBody};
use crate::outbox;
use crate::payment::Payment;
use crate::writer::Op;

/// The widest redelivery window: an hour of events is the most a lesson
/// needs; the writer op is bounded by rows too (`ops::REDELIVER_ROWS_MAX`).
pub(crate) const REDELIVER_WINDOW_MS_MAX: i64 = 3_600_000;

/// `--notify after-commit`: one call per payment after its COMMIT, before
/// the answer; no retry, nothing kept. A crash between the two, or a call
/// that fails, loses the receipt: the mistake the outbox fixes.
pub(crate) struct AfterCommit {
    http: reqwest::Client,
    endpoint: String,
}

impl AfterCommit {
    /// The caller for `config`, if it asks for one.
    pub(crate) fn new(config: &Config) -> Option<AfterCommit> {
        if config.notify != NotifyMode::AfterCommit {
            return None;
        }
        let endpoint = crate::config::receipts_endpoint(config.receipts_url.as_deref()?).ok()?;
        let limits = config.relay;
        let built = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_millis(limits.connect_ms_max))
            .timeout(Duration::from_millis(limits.attempt_ms_max))
            .retry(reqwest::retry::never())
            .build();
        match built {
            Ok(http) => Some(AfterCommit { http, endpoint }),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the after-commit HTTP client; no receipts will be requested");
                None
            }
        }
    }
}

/// Calls the receipts service once for each payment just committed.
pub(crate) async fn after_commit(state: &AppState, payments: &[Payment]) {
    let Some(caller) = &state.0.after_commit else { return };
    // The ledger id, read after the COMMIT (a DELETE in between would name
    // the new ledger: this mode is the lesson's mistake, not a guarantee).
    let ledger_id = match state.0.readers.read(|c| outbox::ledger_id(c)).await {
        Ok(id) => id,
        Err(e) => {
            tracing::debug!(error = %e.detail, "after-commit: no ledger id; receipts not requested");
            return;
        }
    };
    for payment in payments {
        let event = PaymentEvent {
            event_id: eo_core::wire::event_id(&ledger_id, payment.id),
            payment_id: payment.id,
            key: payment.idempotency_key.clone(),
            src: payment.src.clone(),
            dest: payment.dest.clone(),
            amount_minor: payment.amount_minor,
            paid_at_ms: payment.created_at_ms,
        };
        match caller.http.post(&caller.endpoint).json(&event).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::debug!(event = %event.event_id, status = r.status().as_u16(), "after-commit call refused; the receipt is lost")
            }
            Err(e) => {
                tracing::debug!(event = %event.event_id, error = %e, "after-commit call failed; the receipt is lost")
            }
        }
    }
}

/// The body of `POST /outbox/redeliver`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Redelivery {
    window_ms: i64,
}

impl JsonBody for Redelivery {
    const BYTES_MAX: usize = BODY_BYTES_MAX;
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let invalid = |detail: String| ApiError::new(Problem::InvalidRedelivery, detail);
        let r: Redelivery =
            serde_json::from_slice(body).map_err(|e| invalid(format!("the body cannot be read: {e}")))?;
        if !(1..=REDELIVER_WINDOW_MS_MAX).contains(&r.window_ms) {
            return Err(invalid(format!(
                "window_ms must be between 1 and {REDELIVER_WINDOW_MS_MAX}, got {}",
                r.window_ms
            ))
            .with_field("window_ms"));
        }
        Ok(r)
    }
}

/// `POST /outbox/redeliver`: every event delivered within the window
/// (at most `ops::REDELIVER_ROWS_MAX`) is pending again and is sent again.
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    Body(Redelivery { window_ms }): Body<Redelivery>,
) -> Result<Response, ApiError> {
    if state.0.config.notify != NotifyMode::Outbox {
        return Err(ApiError::new(
            Problem::OutboxOff,
            format!(
                "--notify is {}: there is no outbox to redeliver from",
                state.0.config.notify.as_str()
            ),
        ));
    }
    let n = submit(&state, &state.0.writer, |reply| Op::Redeliver { window_ms, reply }).await?;
    tracing::info!(events = n, window_ms, "redelivery: delivered events made pending again");
    state.0.relay_wake.notify_one();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "redelivered": n, "window_ms": window_ms }).to_string(),
    ))
}
