//! `scenarios exercise`: the workshop's exercise as a ladder of five stages,
//! played in order against `payment-service --dedup exercise` (the
//! attendee's `exercise.rs`, reference solution N, or an outside service),
//! stopping at the first that fails with a hint and the timeline of one
//! payment at fault. Each stage fails the natural solution of the one before:
//! reference solution N passes stages 1 to N and fails stage N + 1.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::bail;
use client::history::AttemptRecord;
use serde::Serialize;

use crate::catalog::Scenario;
use crate::play::{self, Outcome, Settings};
use crate::report;

/// The stages: scenario file, its text, and the hint shown when it fails.
const STAGES: [(&str, &str, &str); 5] = [
    (
        "stage-1-retries.toml",
        include_str!("../exercise/stage-1-retries.toml"),
        "Retries paid again: the key is ignored. Before paying, look the key up \
         (tx.payment_with_key(key)); if it has paid before, answer as the first time \
         (Answer::replay(&first)) instead of paying again.",
    ),
    (
        "stage-2-concurrent.toml",
        include_str!("../exercise/stage-2-concurrent.toml"),
        "Both copies looked the key up before either had booked its payment, so both paid: a \
         look-up followed by an insert is two steps, and another request fits between them. \
         Checking the key and claiming it must be one step that only one request can win.",
    ),
    (
        "stage-3-restart.toml",
        include_str!("../exercise/stage-3-restart.toml"),
        "After the restart the retries paid again: what the service knew about its keys lived \
         in memory and died with the process. Keep it where the payment is kept, in the same \
         commit: tx.insert_unique(request, key) lets the ledger's UNIQUE key refuse a second \
         payment (Inserted::KeyTaken).",
    ),
    (
        "stage-4-key-reused.toml",
        include_str!("../exercise/stage-4-key-reused.toml"),
        "A key reused for a different payment was answered as if it were a retry, so the client \
         believes its new payment was made. Compare the request with the one the key first paid \
         (first.matches(request)); a different one gets Answer::key_reused(), a 422, and nothing \
         is paid.",
    ),
    (
        "stage-5-late-retry.toml",
        include_str!("../exercise/stage-5-late-retry.toml"),
        "The retry came after the stored answer had expired and did not get its first answer \
         (or paid again). Stored answers are a cache with an expiry date; the key must also stay \
         where it never expires: on the payment, in the ledger (tx.payment_with_key(key)).",
    ),
];

/// Attempts of the payment at fault printed at most (all are in `--json`).
const TIMELINE_LINES_MAX: usize = 16;
/// The history of a stage read for its timeline at most: stages are small.
const HISTORY_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// One stage: its number (from 1), scenario and hint.
pub struct StageSpec {
    pub number: usize,
    pub scenario: Scenario,
    pub hint: &'static str,
}

/// The five stages, in order.
pub fn stages() -> anyhow::Result<Vec<StageSpec>> {
    STAGES
        .iter()
        .enumerate()
        .map(|(i, (file, text, hint))| {
            Ok(StageSpec {
                number: i + 1,
                scenario: Scenario::parse(&format!("scenarios/exercise/{file}"), text)?,
                hint,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Passed,
    Failed,
    /// Cannot be played against this outside service (see `skipped`).
    Skipped,
    /// After a failed stage: the ladder stops there.
    NotPlayed,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub number: usize,
    pub name: String,
    pub title: String,
    pub status: Status,
    /// Why a stage was skipped.
    pub skipped: Option<String>,
    /// What the stage found (empty when it passed).
    pub problems: Vec<String>,
    pub hint: Option<String>,
    /// The attempts of one payment at fault, when the stage failed.
    pub timeline: Option<Timeline>,
    pub outcome: Option<Outcome>,
}

/// One payment's attempts, from the client's history, in the order made.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub intent: usize,
    pub key: Option<String>,
    pub attempts: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ladder {
    /// What was played: the attendee's file, a reference solution, a URL.
    pub against: String,
    pub seed: u64,
    pub stages: Vec<StageResult>,
    /// Stages passed.
    pub passed: usize,
    /// Every stage passed.
    pub pass: bool,
    /// The command that plays the same ladder again.
    pub replay: String,
}

/// What `--reference` names, or the attendee's file.
pub fn against(settings: &Settings, solution: Option<u8>) -> String {
    match (&settings.outside, solution) {
        (Some(outside), _) => outside.url.clone(),
        (None, Some(n)) => format!("reference solution {n} (scenarios exercise --show-solution {n})"),
        (None, None) => payment_service::EXERCISE_FILE.to_owned(),
    }
}

/// Plays the stages in order, stopping at the first that fails.
pub async fn play_ladder(settings: &Settings, solution: Option<u8>) -> anyhow::Result<Ladder> {
    if let Some(n) = solution
        && usize::from(n) >= payment_service::EXERCISE_SOLUTIONS.len()
    {
        bail!(
            "--reference must be 0 to {}",
            payment_service::EXERCISE_SOLUTIONS.len() - 1
        );
    }
    // Each stage's client history is kept, for the timeline of a failure.
    let (_tmp, keep) = crate::parts::scratch_dir(settings.keep.as_deref(), "exercise")?;
    let stage_settings = Settings {
        payments: settings.payments,
        seed: settings.seed,
        keep: Some(keep.clone()),
        exe: settings.exe.clone(),
        observer: None,
        outside: settings.outside.clone(),
        db_url: settings.db_url.clone(),
    };
    let mut results = Vec::new();
    let mut stopped = false;
    for spec in stages()? {
        let result = if stopped {
            not_played(&spec)
        } else {
            play_stage(&spec, &stage_settings, solution, &keep).await?
        };
        stopped |= result.status == Status::Failed;
        results.push(result);
    }
    let passed = results.iter().filter(|r| r.status == Status::Passed).count();
    let mut replay = format!("scenarios exercise --seed {}", settings.seed);
    if let Some(n) = solution {
        let _ = write!(replay, " --reference {n}");
    }
    if let Some(outside) = &settings.outside {
        let _ = write!(replay, " --service-url {}", outside.url);
    }
    Ok(Ladder {
        against: against(settings, solution),
        seed: settings.seed,
        pass: passed == results.len(),
        passed,
        stages: results,
        replay,
    })
}

fn not_played(spec: &StageSpec) -> StageResult {
    StageResult {
        number: spec.number,
        name: spec.scenario.name.clone(),
        title: spec.scenario.title.clone(),
        status: Status::NotPlayed,
        skipped: None,
        problems: Vec::new(),
        hint: None,
        timeline: None,
        outcome: None,
    }
}

async fn play_stage(
    spec: &StageSpec,
    settings: &Settings,
    solution: Option<u8>,
    keep: &Path,
) -> anyhow::Result<StageResult> {
    let mut result = not_played(spec);
    let mut scenario = spec.scenario.clone();
    if let Some(outside) = &settings.outside {
        match outside.playable(&scenario) {
            Ok(adapted) => scenario = adapted,
            Err(why) => {
                result.status = Status::Skipped;
                result.skipped = Some(why);
                return Ok(result);
            }
        }
    } else {
        scenario.service.exercise_solution = solution;
    }
    let mut outcome = play::play(&scenario, settings).await?;
    outcome.problems.extend(stage_problems(spec.number, &outcome));
    outcome.pass = outcome.problems.is_empty();
    result.problems = outcome.problems.clone();
    if outcome.pass {
        result.status = Status::Passed;
    } else {
        result.status = Status::Failed;
        result.hint = Some(spec.hint.to_owned());
        let history = keep.join(&scenario.name).join("history.jsonl");
        result.timeline = timeline(history, &outcome, spec.number).await;
    }
    result.outcome = Some(outcome);
    Ok(result)
}

fn metric(o: &Outcome, name: &str) -> u64 {
    o.metrics.get(name).copied().unwrap_or(0)
}

/// What a stage demands beyond its lesson's verdict: every payment judged
/// got a yes in the end, and at stage 4 every reused key got a 422.
fn stage_problems(number: usize, o: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    let unconfirmed = metric(o, "unconfirmed");
    if unconfirmed > 0 {
        problems.push(format!(
            "{unconfirmed} of {} payments never got a 2xx answer, though the client retried with the same key",
            o.payments
        ));
    }
    let refused = metric(o, "mismatches_422");
    if number == 4 && refused < o.payments as u64 {
        problems.push(format!(
            "{refused} of {} keys reused for another amount were refused with 422; the others were answered as if nothing was wrong",
            o.payments
        ));
    }
    problems
}

/// The attempts of one payment at fault, from the stage's history file.
async fn timeline(history: PathBuf, o: &Outcome, stage: usize) -> Option<Timeline> {
    let records = tokio::task::spawn_blocking(move || read_history(&history))
        .await
        .ok()??;
    let intent = payment_at_fault(o, &records, stage)?;
    let attempts: Vec<AttemptRecord> = records.into_iter().filter(|r| r.intent == intent).collect();
    let key = attempts.iter().find_map(|a| a.key.clone());
    Some(Timeline { intent, key, attempts })
}

fn read_history(path: &Path) -> Option<Vec<AttemptRecord>> {
    if std::fs::metadata(path).ok()?.len() > HISTORY_BYTES_MAX {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// The reconciliation's first payment at fault; else, at stage 4, the first
/// whose last answer was not a 422; else the first never confirmed.
fn payment_at_fault(o: &Outcome, records: &[AttemptRecord], stage: usize) -> Option<usize> {
    let listed = o
        .reconciliation
        .as_ref()
        .and_then(|r| r.issues.iter().find_map(|i| i.intent));
    if listed.is_some() {
        return listed;
    }
    let mut last = std::collections::BTreeMap::new();
    for r in records {
        last.insert(r.intent, r);
    }
    let ok = |i: &usize| {
        records
            .iter()
            .any(|r| r.intent == *i && r.outcome == client::classify::Outcome::Ok)
    };
    let not_refused = last.iter().find(|(_, r)| r.status != Some(422)).map(|(i, _)| *i);
    match stage {
        4 if not_refused.is_some() => not_refused,
        _ => last
            .keys()
            .copied()
            .find(|i| !ok(i))
            .or_else(|| last.keys().next().copied()),
    }
}

/// The ladder as text: one line per stage passed, the full story of the one
/// that failed with its hint and timeline, then the summary.
pub fn render(ladder: &Ladder) -> String {
    let mut out = String::new();
    let total = ladder.stages.len();
    let _ = writeln!(out, "The exercise: {total} stages against {}.", ladder.against);
    for stage in &ladder.stages {
        let head = format!("stage {} of {total}: {}", stage.number, stage.title);
        match (stage.status, &stage.outcome) {
            (Status::Passed, Some(o)) => {
                let _ = writeln!(out, "  PASS  {head} ({:.1} s)", o.elapsed_ms as f64 / 1000.0);
            }
            (Status::Failed, Some(o)) => render_failure(&mut out, stage, o),
            (Status::Skipped, _) => {
                let why = stage.skipped.as_deref().unwrap_or("");
                let _ = writeln!(out, "  SKIP  {head}: {why}");
            }
            _ => {
                let _ = writeln!(out, "  ----  {head} (not played)");
            }
        }
    }
    render_summary(&mut out, ladder);
    out
}

fn render_failure(out: &mut String, stage: &StageResult, o: &Outcome) {
    let _ = writeln!(out, "  FAIL  stage {}: {}", stage.number, stage.title);
    out.push_str(&report::results(o));
    if let Some(judged) = &o.judged {
        let _ = writeln!(out, "   judged    {judged}");
    }
    if let Some(hint) = &stage.hint {
        let _ = writeln!(out, "\n   hint");
        for line in wrap(hint, 72) {
            let _ = writeln!(out, "     {line}");
        }
    }
    if let Some(t) = &stage.timeline {
        let key = t.key.as_deref().unwrap_or("(no key)");
        let _ = writeln!(out, "\n   one payment at fault: #{}, key {key}", t.intent);
        let lines = timeline_lines(&t.attempts);
        for line in lines.iter().take(TIMELINE_LINES_MAX) {
            let _ = writeln!(out, "     {line}");
        }
        if lines.len() > TIMELINE_LINES_MAX {
            let _ = writeln!(out, "     ... {} more attempts", lines.len() - TIMELINE_LINES_MAX);
        }
        if t.attempts.iter().any(|a| a.status == Some(500)) {
            let _ = writeln!(
                out,
                "     (500: the code panicked; `cargo run -p payment-service -- --dedup exercise` shows its log)"
            );
        }
    }
    let _ = writeln!(out);
}

/// One line per attempt: the run it belongs to (a new one starts when the
/// attempt count starts again), its number, what the client concluded, and
/// the answer.
pub fn timeline_lines(attempts: &[AttemptRecord]) -> Vec<String> {
    let mut run = 0;
    let mut previous = u32::MAX;
    attempts
        .iter()
        .map(|a| {
            if a.attempt <= previous {
                run += 1;
            }
            previous = a.attempt;
            let outcome = format!("{:?}", a.outcome).to_lowercase();
            let answer = match (a.status, a.error) {
                (Some(status), None) => format!("{status}"),
                (Some(status), Some(e)) => format!("{status}, then {e:?}").to_lowercase(),
                (None, Some(e)) => format!("no answer ({e:?})").to_lowercase(),
                (None, None) => "no answer".to_owned(),
            };
            let replayed = if a.replayed == Some(true) { "  replayed" } else { "" };
            format!("run {run}  attempt {:<3} {outcome:<8} {answer}{replayed}", a.attempt)
        })
        .collect()
}

fn render_summary(out: &mut String, ladder: &Ladder) {
    let marks: Vec<String> = ladder
        .stages
        .iter()
        .map(|s| {
            let mark = match s.status {
                Status::Passed => "pass",
                Status::Failed => "FAIL",
                Status::Skipped => "skipped",
                Status::NotPlayed => "-",
            };
            format!("{} {mark}", s.number)
        })
        .collect();
    let _ = writeln!(
        out,
        "\npassed {} of {} stages: {}",
        ladder.passed,
        ladder.stages.len(),
        marks.join(", ")
    );
    if ladder.pass {
        let _ = writeln!(out, "Every stage passes: each payment is paid exactly once.");
    } else if ladder.stages.iter().any(|s| s.status == Status::Failed) {
        if ladder.against == payment_service::EXERCISE_FILE {
            let _ = writeln!(
                out,
                "Change {} and run `cargo run -p scenarios -- exercise` again.",
                ladder.against
            );
        } else {
            let _ = writeln!(out, "The hint says what the stage needs.");
        }
    } else {
        let _ = writeln!(out, "Skipped stages count as not passed: each says what it needs.");
    }
    let _ = writeln!(out, "reproduce with: {}", ladder.replay);
}

/// Splits `text` into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

/// `--show-solution N`: what solution N is, and its code as a diff from the
/// starting state of the exercise (unified, every line shown: the files are
/// short enough for a projector).
pub fn show_solution(n: usize) -> anyhow::Result<String> {
    let sources = payment_service::EXERCISE_SOLUTIONS;
    let Some(solution) = sources.get(n) else {
        bail!("--show-solution must be 0 to {}", sources.len() - 1);
    };
    let (_, start) = split_header(sources[0]);
    let (header, code) = split_header(solution);
    let mut out = String::new();
    for line in header {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "\n--- {} (the starting state)", payment_service::EXERCISE_FILE);
    let _ = writeln!(out, "+++ reference solution {n}");
    for (mark, line) in diff(&start, &code) {
        let _ = writeln!(out, "{mark} {line}");
    }
    Ok(out)
}

/// The module doc (`//!` lines, without the marker) and the code after it.
fn split_header(source: &str) -> (Vec<&str>, Vec<&str>) {
    let lines: Vec<&str> = source.lines().collect();
    let split = lines.iter().position(|l| !l.starts_with("//!")).unwrap_or(lines.len());
    let header = lines[..split]
        .iter()
        .map(|l| {
            l.trim_start_matches("//!")
                .strip_prefix(' ')
                .unwrap_or(l.trim_start_matches("//!"))
        })
        .collect();
    let code = lines[split..].iter().copied().skip_while(|l| l.is_empty()).collect();
    (header, code)
}

/// A line diff by longest common subsequence: `' '` kept, `'-'` removed,
/// `'+'` added. Quadratic, for files of a few dozen lines.
fn diff<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<(char, &'a str)> {
    let (n, m) = (old.len(), new.len());
    let mut common = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            common[i][j] = if old[i] == new[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(n + m));
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            out.push((' ', old[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || common[i + 1][j] >= common[i][j + 1]) {
            // Removals first, as unified diffs show them.
            out.push(('-', old[i]));
            i += 1;
        } else {
            out.push(('+', new[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_keeps_removes_and_adds_lines() {
        let d = diff(&["a", "b", "c"], &["a", "x", "c", "d"]);
        assert_eq!(d, vec![(' ', "a"), ('-', "b"), ('+', "x"), (' ', "c"), ('+', "d")]);
        assert_eq!(diff(&[], &["a"]), vec![('+', "a")]);
    }

    #[test]
    fn every_stage_parses_and_words_wrap() {
        let stages = stages().expect("stages parse");
        assert_eq!(stages.len(), 5);
        assert!(
            stages
                .iter()
                .all(|s| s.scenario.service.dedup == payment_service::DedupMode::Exercise)
        );
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
    }
}
