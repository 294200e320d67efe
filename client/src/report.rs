//! The summary a person reads after a run.

use std::fmt::Write;

use crate::flow::Judged;
use crate::reconcile::Reconciliation;
use crate::runner::Summary;
use crate::strategy::Options;

/// The flag spelling of an option value, e.g. `per-payment`.
pub fn name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// The whole report: strategy, attempts, then the reconciliation and the
/// verdict, or INCONCLUSIVE and why.
pub(crate) fn render(options: &Options, judged: &Judged) -> String {
    let mut out = attempts(options, &judged.summary);
    let _ = writeln!(out);
    let reading = judged.reading;
    let _ = writeln!(
        out,
        "reconciliation against the service's ledger ({} requests, {:.2} s):",
        reading.requests,
        reading.ms as f64 / 1000.0
    );
    match &judged.judgement {
        Ok(r) => reconciliation(&mut out, r),
        Err(why) => {
            let _ = writeln!(out, "  the service could not be read completely: {why}");
            let _ = writeln!(out);
            let _ = writeln!(out, "verdict: INCONCLUSIVE (no verdict without the complete ledger)");
        }
    }
    if let Some(receipts) = &judged.receipts {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "second hop (one receipt per payment, from the receipts service): {receipts}"
        );
    }
    out
}

fn attempts(options: &Options, summary: &Summary) -> String {
    let mut out = String::new();
    let s = summary;
    let _ = writeln!(
        out,
        "strategy: --key {} --retries {} --backoff {} --attempt-timeout-ms {} --concurrency {} --connection {} --seed {}",
        name(options.key),
        options.retries,
        name(options.backoff),
        options.attempt_timeout_ms,
        options.concurrency,
        name(options.connection),
        options.seed
    );
    let _ = writeln!(out);
    let rows: [(&str, String); 12] = [
        ("payments intended", s.intents.to_string()),
        ("confirmed (2xx)", s.confirmed.to_string()),
        ("given up", s.given_up.to_string()),
        (
            "attempts",
            format!(
                "{} in {:.2} s ({} /s)",
                s.attempts,
                s.elapsed_ms as f64 / 1000.0,
                s.attempts_per_s
            ),
        ),
        ("  connection refused", s.connect_errors.to_string()),
        ("  connection reset", s.resets.to_string()),
        ("  timed out", s.timeouts.to_string()),
        ("  cut-off answers", s.incomplete.to_string()),
        ("  replays seen", s.replays_seen.to_string()),
        ("  409 in flight", s.conflicts_409.to_string()),
        ("  503 unavailable", s.unavailable_503.to_string()),
        ("  other 4xx (stopped)", s.refused_4xx.to_string()),
    ];
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<24} {value:>12}");
    }
    out
}

fn reconciliation(out: &mut String, r: &Reconciliation) {
    let _ = writeln!(out, "  {:<24} {:>12}", "money intended", r.expected);
    let _ = writeln!(out, "  {:<24} {:>12}", "money moved", r.moved);
    if r.per_key {
        let rows: [(&str, u64); 9] = [
            ("paid exactly once", r.exactly_once),
            ("lost (never paid)", r.lost),
            ("duplicated", r.duplicated),
            ("  extra payments", r.extra_payments),
            ("orphaned", r.orphaned),
            ("key used before", r.reused_before),
            ("unknown, landed", r.unknown_landed),
            ("acked but missing (!)", r.acknowledged_but_missing),
            ("failed but landed (!)", r.failed_but_landed),
        ];
        for (label, value) in rows {
            let _ = writeln!(out, "  {label:<24} {value:>12}");
        }
        for issue in &r.issues {
            let _ = writeln!(
                out,
                "    {:<20} {} ({} payments)",
                issue.problem, issue.key, issue.payments
            );
        }
    } else {
        let _ = writeln!(out, "  {:<24} {:>12}", "payments made", r.payments);
        let _ = writeln!(
            out,
            "  (no keys: only totals can be compared, not which payment was lost or doubled)"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "verdict: {}", r.verdict.headline());
}
