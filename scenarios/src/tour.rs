//! Playing a list of lessons for a room: each lesson's narrative before it
//! plays, a progress line while it runs (a terminal only), its numbers
//! after, optionally a pause for questions, then the table and the exact
//! command that reproduces the run.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use tokio::sync::mpsc;

use crate::catalog::Scenario;
use crate::live::{FIRST_PAGE_WAIT_MS, Feed, Live};
use crate::observe::{Event, Observer};
use crate::play::{self, Outcome, Settings};
use crate::progress::Progress;
use crate::report;
use crate::target::Outside;

/// Payments per scenario at most: enough for any lesson, bounded for a laptop.
pub const PAYMENTS_MAX: usize = 100_000;

/// Which lessons a run plays, as the command line said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// `scenarios` without a command: the guided tour.
    Tour,
    /// `scenarios run --all`.
    All,
    /// `scenarios run NAME...`.
    Names(Vec<String>),
}

/// Everything on the command line that decides what a run plays and shows.
#[derive(Debug, Clone)]
pub struct Run {
    pub selection: Selection,
    pub payments: usize,
    pub seed: u64,
    pub catalog: Option<PathBuf>,
    pub keep: Option<PathBuf>,
    pub json: bool,
    pub pause: bool,
    /// Serve the live page on this loopback address.
    pub live: Option<std::net::SocketAddr>,
    /// A service this runner did not start (`--service-url`).
    pub outside: Option<Arc<Outside>>,
    /// `--db-url`: every lesson on a fresh PostgreSQL database of that server.
    pub db_url: Option<String>,
}

/// The settings every lesson of `run` shares.
pub fn settings(run: &Run, observer: Option<Observer>) -> anyhow::Result<Settings> {
    if !(1..=PAYMENTS_MAX).contains(&run.payments) {
        bail!("--payments must be between 1 and {PAYMENTS_MAX}");
    }
    Ok(Settings {
        payments: run.payments,
        seed: run.seed,
        keep: run.keep.clone(),
        exe: std::env::current_exe()?,
        observer,
        outside: run.outside.clone(),
        db_url: run.db_url.clone(),
    })
}

/// A word as a POSIX shell reads it back: bare if it is plain, else quoted.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The command that plays the same lessons with the same results: every
/// option that changes a result is repeated (how the output looks is not).
pub fn reproduce(run: &Run) -> String {
    let mut words: Vec<String> = vec!["scenarios".into()];
    match &run.selection {
        Selection::Tour => {}
        Selection::All => words.extend(["run".into(), "--all".into()]),
        Selection::Names(names) => {
            words.push("run".into());
            words.extend(names.iter().map(|n| shell_word(n)));
        }
    }
    words.extend(["--payments".into(), run.payments.to_string()]);
    words.extend(["--seed".into(), run.seed.to_string()]);
    if let Some(dir) = &run.catalog {
        words.extend(["--catalog".into(), shell_word(&dir.display().to_string())]);
    }
    if let Some(outside) = &run.outside {
        words.extend(outside.flags().iter().map(|w| shell_word(w)));
    }
    if let Some(url) = &run.db_url {
        words.extend(["--db-url".into(), shell_word(url)]);
    }
    words.join(" ")
}

/// The command that replays `lesson` as this run did and draws one payment's story.
pub fn explain_command(run: &Run, lesson: &str) -> String {
    let mut words = vec!["scenarios".to_owned(), "explain".into(), shell_word(lesson)];
    words.extend(["--payments".into(), run.payments.to_string()]);
    words.extend(["--seed".into(), run.seed.to_string()]);
    if let Some(dir) = &run.catalog {
        words.extend(["--catalog".into(), shell_word(&dir.display().to_string())]);
    }
    words.join(" ")
}

/// Plays the scenarios; Ctrl-C stops after tearing down what is running
/// (children killed, temporary databases removed).
pub async fn play_all(run: &Run, chosen: Vec<Scenario>) -> anyhow::Result<bool> {
    if !(1..=PAYMENTS_MAX).contains(&run.payments) {
        bail!("--payments must be between 1 and {PAYMENTS_MAX}");
    }
    let live = match run.live {
        Some(addr) => Some(start_live(addr).await?),
        None => None,
    };
    let feed = live.as_ref().map(|l| Feed::new(Arc::clone(&l.hub), &chosen));
    let passed = tokio::select! {
        result = play_each(run, chosen, feed) => result?,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted?;
            eprintln!("\nscenarios: interrupted; nothing was kept (use --keep DIR to keep databases)");
            false
        }
    };
    if let Some(live) = live {
        eprintln!("scenarios: the live page stays at {} until Ctrl-C", live.url);
        let _ = tokio::signal::ctrl_c().await;
        live.stop().await;
    }
    Ok(passed)
}

/// Serves the live page and waits, bounded, for a first page to open it.
async fn start_live(addr: std::net::SocketAddr) -> anyhow::Result<Live> {
    let live = Live::start(addr).await?;
    eprintln!("scenarios: live page at {}", live.url);
    let wait = std::time::Duration::from_millis(FIRST_PAGE_WAIT_MS);
    if !live.first_page(wait).await {
        eprintln!(
            "scenarios: no page opened it within {} s; playing anyway",
            wait.as_secs()
        );
    }
    Ok(live)
}

async fn play_each(run: &Run, chosen: Vec<Scenario>, feed: Option<Feed>) -> anyhow::Result<bool> {
    let (observer, events) = Observer::channel();
    let watcher = tokio::spawn(show_progress(events, !run.json, feed));
    let settings = settings(run, Some(observer))?;
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(chosen.len());
    let mut skipped: Vec<(String, String)> = Vec::new();
    for (i, s) in chosen.iter().enumerate() {
        let Some(s) = adapt(run, s, &mut skipped) else {
            continue;
        };
        if !run.json {
            say(&report::header(i + 1, chosen.len(), &s));
        }
        let outcome = play::play(&s, &settings).await?;
        if !run.json {
            say(&report::results(&outcome));
            if let Some(judged) = &outcome.judged {
                say(&format!("   judged    {judged}\n"));
            }
            say(&report::example(&outcome, &explain_command(run, &s.name)));
        }
        outcomes.push(outcome);
        if run.pause && !run.json && i + 1 < chosen.len() {
            pause(&chosen[i + 1].name).await;
        }
    }
    drop(settings);
    let _ = watcher.await;
    let all_pass = outcomes.iter().all(|o| o.pass);
    if run.json {
        let skipped: Vec<_> = skipped
            .iter()
            .map(|(name, why)| serde_json::json!({ "name": name, "why": why }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "seed": run.seed, "payments": run.payments, "pass": all_pass,
                                "scenarios": outcomes, "skipped": skipped })
        );
    } else {
        say(&report::table(&outcomes, &reproduce(run)));
        for (name, why) in &skipped {
            say(&format!("skipped {name}: {why}\n"));
        }
    }
    Ok(all_pass)
}

/// The lesson as an outside service (`--service-url`) plays it, or None when
/// it cannot (noted in `skipped` with why); this project's own service plays
/// every lesson as written.
fn adapt(run: &Run, s: &Scenario, skipped: &mut Vec<(String, String)>) -> Option<Scenario> {
    let Some(outside) = &run.outside else {
        return Some(s.clone());
    };
    outside
        .playable(s)
        .map_err(|why| skipped.push((s.name.clone(), why)))
        .ok()
}

/// Prints and flushes at once, so the narrative is on screen before the lesson plays.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The progress line of each lesson, from its start to its verdict, and
/// the live page's feed.
async fn show_progress(mut events: mpsc::Receiver<Event>, enabled: bool, mut feed: Option<Feed>) {
    let mut line: Option<Progress> = None;
    while let Some(event) = events.recv().await {
        match event {
            Event::Started(parts) => {
                if let Some(feed) = feed.as_mut() {
                    feed.started(&parts).await;
                }
                if let Some(old) = line.take() {
                    old.stop().await;
                }
                if enabled {
                    line = Some(Progress::start(parts));
                }
            }
            Event::Judged {
                parts,
                outcome,
                release,
            } => {
                if let Some(done) = line.take() {
                    done.stop().await;
                }
                if let Some(feed) = feed.as_mut() {
                    feed.judged(&parts, &outcome).await;
                }
                let _ = release.send(());
            }
        }
    }
    if let Some(done) = line {
        done.stop().await;
    }
}

/// Waits for Enter (the facilitator's questions); returns at once when
/// stdin is closed.
async fn pause(next: &str) {
    say(&format!("\n   [Enter] next lesson: {next} "));
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(selection: Selection, catalog: Option<&str>) -> Run {
        Run {
            selection,
            payments: 30,
            seed: 7,
            catalog: catalog.map(PathBuf::from),
            keep: Some("runs".into()),
            json: true,
            pause: true,
            live: None,
            outside: None,
            db_url: None,
        }
    }

    #[test]
    fn reproduce_repeats_every_option_that_changes_the_result() {
        assert_eq!(
            reproduce(&run(Selection::Tour, None)),
            "scenarios --payments 30 --seed 7"
        );
        assert_eq!(
            reproduce(&run(Selection::All, Some("my lessons/it's"))),
            r"scenarios run --all --payments 30 --seed 7 --catalog 'my lessons/it'\''s'"
        );
        let names = Selection::Names(vec!["at-most-once".into(), "exactly-once".into()]);
        assert_eq!(
            reproduce(&run(names, Some("/tmp/cat"))),
            "scenarios run at-most-once exactly-once --payments 30 --seed 7 --catalog /tmp/cat"
        );
        let on_postgres = Run {
            db_url: Some("postgres://u@127.0.0.1:5432/admin".into()),
            ..run(Selection::All, None)
        };
        assert_eq!(
            reproduce(&on_postgres),
            "scenarios run --all --payments 30 --seed 7 --db-url postgres://u@127.0.0.1:5432/admin"
        );
    }
}
