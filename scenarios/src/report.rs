//! What the runner prints: a narrative per scenario and a final table.

use std::fmt::Write;

use crate::play::Outcome;

fn metric(o: &Outcome, name: &str) -> u64 {
    o.metrics.get(name).copied().unwrap_or(0)
}

/// The story of one scenario: what it shows, then its numbers.
pub fn narrative(index: usize, o: &Outcome) -> String {
    let mut out = String::new();
    let rule = "─".repeat(78usize.saturating_sub(o.title.len() + 8));
    let _ = writeln!(out, "\n── {index}. {} {rule}", o.title);
    for line in o.lesson.lines() {
        let _ = writeln!(out, "   {line}");
    }
    let _ = writeln!(out);
    let (up, down) = (metric(o, "faults_upstream"), metric(o, "faults_downstream"));
    if up + down > 0 {
        let _ = writeln!(
            out,
            "   network   {up} faults before the service (upstream), {down} after it answered (downstream)"
        );
    }
    let restarts = metric(o, "service_restarts");
    if restarts > 0 {
        let _ = writeln!(out, "   service   crashed and restarted {restarts} times");
    }
    let mut seen = Vec::new();
    for (name, label) in [
        ("resets", "resets"),
        ("timeouts", "timeouts"),
        ("connect_errors", "refused connections"),
        ("conflicts_409", "409 in flight"),
        ("mismatches_422", "422 key reused"),
        ("replays", "replays"),
    ] {
        let value = metric(o, name);
        if value > 0 {
            seen.push(format!("{value} {label}"));
        }
    }
    let seen = if seen.is_empty() {
        String::new()
    } else {
        format!(": {}", seen.join(", "))
    };
    let _ = writeln!(
        out,
        "   client    {} payments, {} attempts{seen}",
        o.payments,
        metric(o, "attempts")
    );
    let detail = match &o.reconciliation {
        Some(r) if r.per_key => format!(
            "{} exactly once, {} lost, {} paid twice or more ({} extra payments)",
            r.exactly_once, r.lost, r.duplicated, r.extra_payments
        ),
        Some(_) if o.judged.is_some() => "only the totals could be compared".to_owned(),
        Some(r) => format!(
            "{} payments stored for {} intended (no keys: only totals can be compared)",
            r.payments, r.intents
        ),
        None => "not known: the service could not be read completely".to_owned(),
    };
    let _ = writeln!(out, "   money     intended {}, moved {}: {detail}", o.intended, o.moved);
    let result = if o.pass { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "   verdict   {} (expected {}) {result}",
        o.headline(),
        o.expected.headline()
    );
    for problem in &o.problems {
        let _ = writeln!(out, "   problem   {problem}");
    }
    out
}

/// The closing table.
pub fn table(outcomes: &[Outcome], seed: u64, replay: &str) -> String {
    let mut out = String::new();
    let name_width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<name_width$}  {:>9}  {:>8}  {:>10}  {:>10}  {:<28}  {:<28}  {:>6}  {:>6}",
        "scenario", "faults", "attempts", "intended", "moved", "verdict", "expected", "result", "time"
    );
    let _ = writeln!(out, "{:<name_width$}  {:>9}", "", "up/down");
    for o in outcomes {
        let faults = format!("{}/{}", metric(o, "faults_upstream"), metric(o, "faults_downstream"));
        let _ = writeln!(
            out,
            "{:<name_width$}  {faults:>9}  {:>8}  {:>10}  {:>10}  {:<28}  {:<28}  {:>6}  {:>5.1}s",
            o.name,
            metric(o, "attempts"),
            o.intended,
            o.moved,
            o.headline(),
            o.expected.headline(),
            if o.pass { "PASS" } else { "FAIL" },
            o.elapsed_ms as f64 / 1000.0
        );
    }
    let passed = outcomes.iter().filter(|o| o.pass).count();
    let _ = writeln!(
        out,
        "\n{passed} of {} scenarios behaved as their lesson says.",
        outcomes.len()
    );
    let _ = writeln!(out, "reproduce with: {replay} --seed {seed}");
    out
}
