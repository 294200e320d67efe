//! What the runner prints: per lesson, its narrative before it plays and its
//! numbers after; then a compact table. Every line fits [`WIDTH_COLUMNS_MAX`]
//! columns, so the tour reads on a projector without wrapping mid-word.

use std::fmt::Write;

use crate::catalog::Scenario;
use crate::play::{Outcome, receipt_headline};

/// Widest line the tour prints, in characters (a projector terminal).
pub const WIDTH_COLUMNS_MAX: usize = 100;
/// Where the text of a detail line starts (after `   money     `).
const DETAIL_INDENT: usize = 13;

fn metric(o: &Outcome, name: &str) -> u64 {
    o.metrics.get(name).copied().unwrap_or(0)
}

/// `text` broken at spaces into lines of at most `width` characters, the
/// first starting with `first`, the others with `rest` (a word longer than
/// a whole line is split, never cut).
pub fn wrap(first: &str, rest: &str, text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_owned();
    let mut empty = true;
    let mut words: std::collections::VecDeque<String> = text.split_whitespace().map(str::to_owned).collect();
    while let Some(word) = words.pop_front() {
        let len = line.chars().count();
        let word_len = word.chars().count();
        if !empty && len + 1 + word_len > width {
            lines.push(std::mem::replace(&mut line, rest.to_owned()));
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        let room = width.saturating_sub(line.chars().count()).max(1);
        if word_len > room && empty {
            // Longer than a whole line: this line takes what fits, the next the rest.
            words.push_front(word.chars().skip(room).collect());
        }
        line.extend(word.chars().take(room));
        empty = false;
    }
    lines.push(line);
    lines
}

/// One labelled detail line (`   money     ...`), wrapped under its text.
fn detail(out: &mut String, label: &str, text: &str) {
    let first = format!("   {label:<9} ");
    for line in wrap(&first, &" ".repeat(DETAIL_INDENT), text, WIDTH_COLUMNS_MAX) {
        let _ = writeln!(out, "{line}");
    }
}

/// What a lesson shows, printed before it plays.
pub fn header(index: usize, total: usize, s: &Scenario) -> String {
    let mut out = String::new();
    let title = format!("── {index}/{total}. {}", s.title);
    let _ = writeln!(out);
    for line in wrap("", "   ", &title, WIDTH_COLUMNS_MAX - 2) {
        let fill = WIDTH_COLUMNS_MAX.saturating_sub(line.chars().count() + 1);
        let _ = writeln!(out, "{line} {}", "─".repeat(fill));
    }
    for paragraph in s.lesson.trim().lines() {
        for line in wrap("   ", "   ", paragraph, WIDTH_COLUMNS_MAX) {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out);
    out
}

/// What the client saw, in words (`3 resets, 2 replays`).
fn seen(o: &Outcome) -> String {
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
    if seen.is_empty() {
        String::new()
    } else {
        format!(": {}", seen.join(", "))
    }
}

fn money(o: &Outcome) -> String {
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
    format!("intended {}, moved {}: {detail}", o.intended, o.moved)
}

/// The lesson's numbers, printed after it played.
pub fn results(o: &Outcome) -> String {
    let mut out = String::new();
    let (up, down) = (metric(o, "faults_upstream"), metric(o, "faults_downstream"));
    if up + down > 0 {
        let text = format!("{up} faults before the service (upstream), {down} after it answered (downstream)");
        detail(&mut out, "network", &text);
    }
    let restarts = metric(o, "service_restarts");
    if restarts > 0 {
        detail(&mut out, "service", &format!("crashed and restarted {restarts} times"));
    }
    let client = format!("{} payments, {} attempts{}", o.payments, metric(o, "attempts"), seen(o));
    detail(&mut out, "client", &client);
    detail(&mut out, "money", &money(o));
    let result = if o.pass { "PASS" } else { "FAIL" };
    let verdict = format!(
        "{} (expected {}) {result}, in {:.1} s",
        o.headline(),
        o.expected.headline(),
        o.elapsed_ms as f64 / 1000.0
    );
    detail(&mut out, "verdict", &verdict);
    if let (Some(receipts), Some(expected)) = (&o.receipts, o.expected_receipts) {
        detail(&mut out, "2nd hop", &second_hop(o));
        let text = format!("{receipts} (expected {})", receipt_headline(expected));
        detail(&mut out, "receipts", &text);
    }
    for problem in &o.problems {
        detail(&mut out, "problem", problem);
    }
    if let Some(log) = &o.log {
        logs(&mut out, log);
    }
    out
}

/// What the second hop did: deliveries through its faults, redeliveries
/// absorbed by the inbox or stored as duplicate receipts.
fn second_hop(o: &Outcome) -> String {
    let mut parts = Vec::new();
    let deliveries = metric(o, "relay_attempts");
    if deliveries > 0 {
        parts.push(format!("{deliveries} deliveries by the relay"));
    }
    let faults = metric(o, "receipts_faults");
    if faults > 0 {
        parts.push(format!("{faults} faults on the way to the receipts service"));
    }
    let again = metric(o, "outbox_redelivered");
    if again > 0 {
        parts.push(format!("{again} events delivered again"));
    }
    parts.push(format!(
        "{} redeliveries absorbed, {} duplicate receipts",
        metric(o, "duplicates_absorbed"),
        metric(o, "duplicate_receipts")
    ));
    parts.join(", ")
}

/// One payment worth explaining, and the command that draws a story like it
/// (`explain` replays the lesson; with concurrent clients the faults may
/// land on other payments, so it picks the first telling one again).
pub fn example(o: &Outcome, command: &str) -> String {
    let mut out = String::new();
    let Some(e) = &o.example else { return out };
    let key = e
        .key
        .as_deref()
        .map_or(String::new(), |k| format!(" ({})", crate::story::short_key(k)));
    detail(
        &mut out,
        "explain",
        &format!("payment {}{key}: {}; draw one like it:", e.payment, e.why),
    );
    let indent = " ".repeat(DETAIL_INDENT);
    let lines = wrap(&indent, &format!("{indent}    "), command, WIDTH_COLUMNS_MAX - 2);
    for (i, line) in lines.iter().enumerate() {
        let more = if i + 1 < lines.len() { " \\" } else { "" };
        let _ = writeln!(out, "{line}{more}");
    }
    out
}

/// The parts' log, summarised: counts, the most frequent messages, where the file is.
fn logs(out: &mut String, log: &crate::logs::LogSummary) {
    if log.warnings + log.errors == 0 && log.dropped == 0 {
        return;
    }
    let place = match &log.kept {
        Some(path) => format!("in {}", path.display()),
        None => "kept with --keep DIR".to_owned(),
    };
    let dropped = if log.dropped > 0 {
        format!(", {} lines dropped", log.dropped)
    } else {
        String::new()
    };
    let text = format!(
        "the parts logged {} errors, {} warnings{dropped} ({place})",
        log.errors, log.warnings
    );
    detail(out, "logs", &text);
    for (level, count, message) in &log.top {
        detail(out, "", &format!("{count} × {level} {message}"));
    }
}

/// A column of the closing table.
struct Column {
    head: &'static str,
    /// Left-aligned (text) or right-aligned (numbers).
    left: bool,
    cells: Vec<String>,
}

impl Column {
    fn width(&self) -> usize {
        self.cells
            .iter()
            .map(|c| c.chars().count())
            .chain([self.head.chars().count()])
            .max()
            .unwrap_or(0)
    }
}

fn columns(outcomes: &[Outcome]) -> Vec<Column> {
    let cells = |f: &dyn Fn(&Outcome) -> String| outcomes.iter().map(f).collect::<Vec<_>>();
    let column = |head, left, cells| Column { head, left, cells };
    vec![
        column("scenario", true, cells(&|o| o.name.clone())),
        column(
            "faults ↑/↓",
            false,
            cells(&|o| format!("{}/{}", metric(o, "faults_upstream"), metric(o, "faults_downstream"))),
        ),
        column("attempts", false, cells(&|o| metric(o, "attempts").to_string())),
        column("intended", false, cells(&|o| o.intended.clone())),
        column("moved", false, cells(&|o| o.moved.clone())),
        column("verdict", true, cells(&|o| o.headline().to_owned())),
        column(
            "receipts",
            true,
            cells(&|o| {
                o.receipts
                    .as_ref()
                    .map_or("–", |r| receipt_headline(r.outcome))
                    .to_owned()
            }),
        ),
        column(
            "result",
            true,
            cells(&|o| (if o.pass { "PASS" } else { "FAIL" }).to_owned()),
        ),
    ]
}

/// Columns left out, in this order, while the table is too wide (only
/// with very long names or huge counts; the tour's table keeps them all).
const DROPPABLE: &[&str] = &["attempts", "intended", "faults ↑/↓"];
const GAP: &str = "  ";

fn render_row(out: &mut String, columns: &[Column], cell: &dyn Fn(&Column) -> String) {
    let mut line = String::new();
    for (i, c) in columns.iter().enumerate() {
        let text = cell(c);
        let pad = c.width().saturating_sub(text.chars().count());
        if i > 0 {
            line.push_str(GAP);
        }
        if c.left {
            line.push_str(&text);
            line.push_str(&" ".repeat(pad));
        } else {
            line.push_str(&" ".repeat(pad));
            line.push_str(&text);
        }
    }
    let _ = writeln!(out, "{}", line.trim_end());
}

/// The closing table, at most [`WIDTH_COLUMNS_MAX`] wide, then how to reproduce the run.
pub fn table(outcomes: &[Outcome], replay: &str) -> String {
    let mut columns = columns(outcomes);
    let total = |cs: &[Column]| cs.iter().map(Column::width).sum::<usize>() + GAP.len() * cs.len().saturating_sub(1);
    for drop in DROPPABLE {
        if total(&columns) <= WIDTH_COLUMNS_MAX {
            break;
        }
        columns.retain(|c| c.head != *drop);
    }
    let mut out = String::new();
    let _ = writeln!(out);
    render_row(&mut out, &columns, &|c| c.head.to_owned());
    for row in 0..outcomes.len() {
        render_row(&mut out, &columns, &|c| c.cells[row].clone());
    }
    let passed = outcomes.iter().filter(|o| o.pass).count();
    let _ = writeln!(
        out,
        "\n{passed} of {} scenarios behaved as their lesson says.",
        outcomes.len()
    );
    // A long command is continued with `\`, so it still pastes into a shell.
    let lines = wrap("reproduce with: ", "    ", replay, WIDTH_COLUMNS_MAX - 2);
    for (i, line) in lines.iter().enumerate() {
        let more = if i + 1 < lines.len() { " \\" } else { "" };
        let _ = writeln!(out, "{line}{more}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_breaks_at_spaces_and_splits_only_words_longer_than_a_line() {
        assert_eq!(wrap("> ", "  ", "aa bb cc", 5), vec!["> aa", "  bb", "  cc"]);
        assert_eq!(wrap("", "", "abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(wrap("x: ", "", "", 10), vec!["x: "]);
    }
}
