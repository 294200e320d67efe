//! The line that says a lesson is still playing: shown on stderr once a
//! lesson has run for a second, only when stderr is a terminal, and erased
//! before the lesson's results are printed. It reads the service's `/stats`
//! (money moved so far, requests received) as any observer could.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::observe::Parts;

/// A lesson shorter than this shows no progress line at all.
const QUIET_MS: u64 = 1_000;
/// How often the line is refreshed (and `/stats` read).
const REFRESH_MS: u64 = 250;
/// A `/stats` read taking longer is skipped; the line keeps its last figures.
const STATS_TIMEOUT_MS: u64 = 1_000;

/// Runs until stopped ([`Progress::stop`]), or dropped (the task is then
/// aborted, not waited for).
pub struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    /// Starts the line for a lesson whose parts are up; nothing at all when
    /// stderr is not a terminal.
    pub fn start(parts: Parts) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        Progress(Some(tokio::spawn(draw(parts))))
    }

    /// Erases the line and waits until it is gone. Dropping only aborts:
    /// a draw already running on another worker could then print, or
    /// erase a line, after the lesson's results.
    pub async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

async fn draw(parts: Parts) {
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(QUIET_MS)).await;
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("   {spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    // Erases the line however the task ends (aborted when the lesson is done).
    let _clear = ClearOnDrop(bar.clone());
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(STATS_TIMEOUT_MS))
        .build()
        .ok();
    let intended = client::money::format_minor(parts.intended_minor);
    let mut figures = String::new();
    loop {
        if let Some(http) = &http
            && let Some(stats) = read_stats(http, &parts.service_url).await
        {
            let moved = stats["total_amount"].as_str().unwrap_or("?");
            let received = stats["received"].as_u64().unwrap_or(0);
            figures = format!("moved {moved} of {intended}, {received} requests reached the service");
        }
        bar.set_message(format!(
            "{} playing, {:.0} s: {figures}",
            parts.lesson,
            started.elapsed().as_secs_f64()
        ));
        bar.tick();
        tokio::time::sleep(Duration::from_millis(REFRESH_MS)).await;
    }
}

struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

async fn read_stats(http: &reqwest::Client, service: &str) -> Option<Value> {
    let response = http.get(format!("{service}/stats")).send().await.ok()?;
    response.json().await.ok()
}
