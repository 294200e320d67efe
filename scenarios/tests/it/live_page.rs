//! The live page in a real browser: headless Chromium loads it while a
//! lesson plays; the page reports what its DOM shows (`POST /seen`), and
//! those numbers must equal the runner's JSON verdict. Skipped, with a
//! message, where Chromium is not installed, except in CI (`CI` set), where
//! `.ci/run` installs it and a missing browser fails the test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Bound on each wait of this test (the lesson itself takes a few seconds).
const WAIT: Duration = Duration::from_secs(60);

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn browser(exe: &Path, url: &str, profile: &Path) -> Child {
    Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts")
}

/// Reads lines from `lines` until one contains `marker`; returns it.
async fn line_with<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>, marker: &str) -> String {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.contains(marker) {
                return line;
            }
        }
        panic!("the runner ended without {marker:?}");
    });
    found.await.unwrap_or_else(|_| panic!("no {marker:?} within {WAIT:?}"))
}

/// Polls `GET /seen` until the page reports the judged lesson with its story.
async fn seen_by_page(url: &str, lesson: &str) -> Value {
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < WAIT,
            "the page reported nothing for {lesson} within {WAIT:?}"
        );
        if let Ok(response) = http.get(format!("{url}seen")).send().await
            && let Ok(seen) = response.json::<Value>().await
            && seen[lesson]["story"].as_str().is_some_and(|s| s.contains("ledger:"))
        {
            return seen[lesson].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_chromium_shows_the_runners_numbers() {
    let Some(exe) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: .ci/run installs Debian's chromium"
        );
        eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium); the live page was not tested");
        return;
    };
    let mut runner = Command::new(env!("CARGO_BIN_EXE_scenarios"))
        .args([
            "run",
            "exactly-once",
            "dual-write",
            "--payments",
            "400",
            "--seed",
            "7",
            "--json",
            "--live",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the runner starts");
    let mut stderr = BufReader::new(runner.stderr.take().expect("stderr")).lines();
    let announced = line_with(&mut stderr, "live page at ").await;
    let url = announced.rsplit(' ').next().expect("url").to_owned();
    let profile = tempfile::tempdir().expect("profile dir");
    // The runner waits for this page before it plays the lesson.
    let mut page = browser(&exe, &url, profile.path());

    let mut stdout = BufReader::new(runner.stdout.take().expect("stdout")).lines();
    let verdict: Value = serde_json::from_str(&line_with(&mut stdout, "\"scenarios\"").await).expect("JSON");
    let seen = seen_by_page(&url, "exactly-once").await;
    let second_hop = seen_by_page(&url, "dual-write").await;
    let _ = page.kill().await;
    let _ = runner.kill().await;

    let judged = &verdict["scenarios"][0];
    let metric = |name: &str| judged["metrics"][name].as_u64().expect(name).to_string();
    println!("the page showed {seen:#}");
    assert_eq!(seen["intended"], judged["intended"]);
    assert_eq!(seen["moved"], judged["moved"]);
    assert_eq!(seen["verdict"], "EXACTLY ONCE (expected EXACTLY ONCE) PASS");
    assert_eq!(seen["faults_up"].as_str(), Some(metric("faults_upstream").as_str()));
    assert_eq!(seen["faults_down"].as_str(), Some(metric("faults_downstream").as_str()));
    assert_eq!(seen["attempts"].as_str(), Some(metric("attempts").as_str()));
    assert_eq!(seen["replays"].as_str(), Some(metric("replays").as_str()));
    assert_eq!(seen["conflicts_409"].as_str(), Some(metric("conflicts_409").as_str()));
    // What the service sent is read from it at the verdict: every replay
    // and 409 the client received, and those lost on the way back.
    let number = |field: &str| seen[field].as_str().and_then(|s| s.parse::<u64>().ok());
    assert!(
        number("replays_sent") >= number("replays") && number("replays").is_some(),
        "{seen}"
    );
    assert!(
        number("conflicts_sent") >= number("conflicts_409") && number("conflicts_409").is_some(),
        "{seen}"
    );
    // It was live: figures arrived while the lesson played, before its verdict.
    assert!(seen["progress_renders"].as_u64().is_some_and(|n| n >= 2), "{seen}");
    assert!(
        seen["story"].as_str().is_some_and(|s| s.contains("attempt 1")),
        "{seen}"
    );
    // A lesson with a second hop shows the receipts' verdict next to the payments'.
    assert_eq!(
        second_hop["verdict"],
        "EXACTLY ONCE (expected EXACTLY ONCE) · receipts MISSING (expected MISSING) PASS"
    );
    assert_eq!(second_hop["moved"], verdict["scenarios"][1]["moved"]);
}
