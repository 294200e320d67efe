//! `GET /audit`: the full audit (see `audit.rs`) on the audit's own reader
//! connection, one at a time, logging its progress; its result is recorded
//! on the ledger so that `/stats` can say what the latest audit found.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use eo_core::wire::AuditVerdict;

use crate::api::{AppState, json};
use crate::audit::{self, Audited, Balances, Progress};
use crate::clock;
use crate::db_error::{DbError, DbResult};
use crate::error::{ApiError, Problem};
use crate::readers::{Chunked, Readers};
use crate::totals::LastAudit;
use crate::writer::Op;

/// The audit logs its progress at most this often.
const AUDIT_LOG_EVERY_MS: u64 = 2_000;

pub(crate) async fn audit(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(permit) = state.0.pools.audit.try_permit() else {
        let progress = state.0.audit_progress.lock().map(|p| p.clone()).unwrap_or_default();
        return Err(ApiError::new(
            Problem::AuditInProgress,
            format!("another audit is running ({progress}); ask again when it is done"),
        ));
    };
    if let Some(why) = state.0.watch.lost() {
        return Err(DbError::FileReplaced(why.to_owned()).to_api());
    }
    let (pool, progress) = (Arc::clone(&state.0.pools.audit), Arc::clone(&state.0.audit_progress));
    let audited = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        run_logged(&pool, &progress)
    })
    .await
    .map_err(|e| ApiError::new(Problem::TemporarilyUnavailable, format!("the audit failed: {e}")))?
    .map_err(|e| e.to_api())?;
    record(&state, &audited);
    Ok(json(
        StatusCode::OK,
        serde_json::to_string(&audited.report).unwrap_or_default(),
    ))
}

/// Runs the audit, keeping `shown` up to date and logging every few seconds.
fn run_logged(pool: &Readers, shown: &Mutex<String>) -> DbResult<Audited> {
    tracing::info!("audit started");
    let mut last_log = Instant::now();
    let mut progress = |p: Progress| {
        let text = format!("{}: {} of about {} read", p.phase, p.read, p.of);
        if let Ok(mut shown) = shown.lock() {
            *shown = text;
        }
        if last_log.elapsed() >= Duration::from_millis(AUDIT_LOG_EVERY_MS) {
            tracing::info!(phase = p.phase, read = p.read, of = p.of, "audit in progress");
            last_log = Instant::now();
        }
    };
    let audited = audit::run(&mut Chunked(pool), Balances::Check, &mut progress)?;
    let report = &audited.report;
    tracing::info!(
        verdict = ?report.verdict,
        findings = ?report.findings,
        payments = report.payments_read + report.rows_after_start,
        elapsed_ms = report.elapsed_ms,
        "audit finished"
    );
    Ok(audited)
}

/// Hands a conclusive result to the writer to keep on the ledger it
/// audited. Best effort: a full queue only means `/stats` shows an older one.
fn record(state: &AppState, audited: &Audited) {
    let report = &audited.report;
    let (Some(ledger_uid), Some(accounts_off_ledger)) = (audited.ledger_uid, report.accounts_off_ledger) else {
        return;
    };
    if report.verdict == AuditVerdict::Inconclusive {
        return;
    }
    let verdict = match report.verdict {
        AuditVerdict::Agree => "agree",
        _ => "disagree",
    };
    let audit = LastAudit {
        finished_at_ms: clock::now_ms(),
        verdict: verdict.to_owned(),
        accounts_off_ledger,
    };
    if state.0.writer.try_send(Op::RecordAudit { ledger_uid, audit }).is_err() {
        tracing::warn!("the write queue is full: the audit's result is not recorded for /stats");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Service;
    use crate::config::Config;

    #[tokio::test]
    async fn a_second_audit_while_one_runs_is_a_409_that_says_how_far_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::open(Config::new(dir.path().join("p.db"))).await.unwrap();
        let state = service.state.clone();
        // What a running audit holds: the audit pool's one connection.
        let running = state.0.pools.audit.try_permit().expect("free");
        *state.0.audit_progress.lock().unwrap() = "payments: 5 of about 10 read".into();
        let refused = audit(State(state.clone())).await.expect_err("refused");
        assert_eq!(refused.problem, Problem::AuditInProgress);
        assert_eq!(refused.problem.status(), StatusCode::CONFLICT);
        assert!(
            refused.detail.contains("payments: 5 of about 10 read"),
            "{}",
            refused.detail
        );
        drop(running);
        assert_eq!(audit(State(state)).await.expect("runs").status(), StatusCode::OK);
        service.stop().await;
    }
}
