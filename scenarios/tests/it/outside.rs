//! Lessons against a service this runner did not start (`--service-url`):
//! this project's own service as a separate process (judged per key through
//! its read API), a stand-in for the original workshop's service (its
//! shape from the shipped target file, judged by its bare-number `/stats`),
//! and `--service-cmd`, with which the runner starts, kills and restarts it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use client::reconcile::Verdict;
use scenarios::catalog::{self, Scenario};
use scenarios::exercise::{self, Status};
use scenarios::play::{self, Outcome, Settings};
use scenarios::target::Outside;
use tokio::io::{AsyncBufReadExt, BufReader};

const SEED: u64 = 20_261_211;
const WAIT: Duration = Duration::from_secs(10);
const EXE: &str = env!("CARGO_BIN_EXE_scenarios");

fn settings(outside: Outside) -> Settings {
    Settings {
        payments: 30,
        seed: SEED,
        keep: None,
        exe: EXE.into(),
        observer: None,
        outside: Some(Arc::new(outside)),
        db_url: None,
    }
}

fn lesson(name: &str) -> Scenario {
    let all = catalog::load(None).expect("catalog");
    all.into_iter().find(|s| s.name == name).expect("lesson")
}

/// Plays a catalog lesson against `outside`, as `scenarios run` does.
async fn play_against(outside: Outside, name: &str) -> Outcome {
    let s = outside.adapt(&lesson(name));
    assert!(outside.skip_reason(&s).is_none(), "{name} must not be skipped");
    play::play(&s, &settings(outside)).await.expect("the lesson plays")
}

/// This project's payment service as a separate process, as an operator
/// would run it; the child is killed when dropped.
async fn own_service(db: &Path, flags: &[&str]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(EXE)
        .args(["__serve-payment", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .args(flags)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the service starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::time::timeout(WAIT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("in time")
        .expect("reads")
        .expect("a first line");
    let url = line
        .rsplit("listening on ")
        .next()
        .expect("the address")
        .trim()
        .to_owned();
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_projects_service_from_outside_is_judged_per_key_exact_and_too_much() {
    for (dedup, verdict) in [("unique", Verdict::ExactlyOnce), ("off", Verdict::TooMuch)] {
        let dir = tempfile::tempdir().expect("dir");
        let (_child, url) = own_service(&dir.path().join("p.db"), &["--dedup", dedup]).await;
        let outside = Outside::new(&url, None, None).await.expect("outside");
        let outcome = play_against(outside, "exactly-once").await;
        assert_eq!(
            outcome.verdict,
            Some(verdict),
            "--dedup {dedup}: {:?}",
            outcome.problems
        );
        assert_eq!(outcome.pass, verdict == Verdict::ExactlyOnce, "{:?}", outcome.problems);
        let judged = outcome.judged.expect("says how it judged");
        assert!(
            judged.starts_with("per key") && judged.contains("POST /payments/lookup"),
            "{judged}"
        );
        let r = outcome.reconciliation.expect("a reconciliation");
        assert!(r.per_key);
        if verdict == Verdict::TooMuch {
            assert!(r.duplicated > 0, "{r:?}");
        }
    }
}

/// A stand-in for the original workshop's Spring service: `POST /payments/`
/// with `Payment-Idempotence-Key` and a string amount, 200 with no body,
/// 208 for a key seen before (unless `dedup` is off), `GET /stats` the total
/// as a bare number, as a Java double prints it.
#[derive(Default)]
struct Workshop {
    dedup: bool,
    keys: Mutex<HashSet<String>>,
    total_cents: AtomicI64,
}

async fn workshop_pay(State(w): State<Arc<Workshop>>, headers: HeaderMap, body: String) -> StatusCode {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Some(cents) = json["amount"].as_str().and_then(|a| client::money::parse_minor(a).ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    if let Some(key) = headers.get("payment-idempotence-key").and_then(|v| v.to_str().ok()) {
        let fresh = w.keys.lock().expect("lock").insert(key.to_owned());
        if w.dedup && !fresh {
            return StatusCode::ALREADY_REPORTED;
        }
    }
    w.total_cents.fetch_add(cents, Ordering::SeqCst);
    StatusCode::OK
}

async fn workshop_stats(State(w): State<Arc<Workshop>>) -> String {
    let cents = w.total_cents.load(Ordering::SeqCst);
    if cents % 100 == 0 {
        format!("{}.0", cents / 100)
    } else {
        format!("{}.{:02}", cents / 100, cents % 100)
    }
}

async fn workshop(dedup: bool) -> String {
    let state = Arc::new(Workshop {
        dedup,
        ..Workshop::default()
    });
    let app = Router::new()
        .route("/payments/", post(workshop_pay))
        .route("/stats", get(workshop_stats))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_workshops_shape_is_judged_by_its_bare_number_stats() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/original-workshop.toml");
    for (dedup, verdict) in [(true, Verdict::ExactlyOnce), (false, Verdict::TooMuch)] {
        let url = workshop(dedup).await;
        let outside = Outside::new(&url, Some(&file), None).await.expect("outside");
        let outcome = play_against(outside, "exactly-once").await;
        assert_eq!(outcome.verdict, Some(verdict), "dedup {dedup}: {:?}", outcome.problems);
        assert_eq!(outcome.pass, dedup, "{:?}", outcome.problems);
        let judged = outcome.judged.expect("says how it judged");
        assert!(judged.starts_with("totals only"), "{judged}");
        assert_eq!(outcome.intended, "30.00");
        if dedup {
            assert_eq!(outcome.moved, "30.00");
        }
    }
}

#[tokio::test]
async fn lessons_that_kill_the_service_need_a_start_command() {
    let outside = Outside::new("http://127.0.0.1:9", None, None).await.expect("outside");
    let crash = outside.skip_reason(&lesson("crash-after-commit")).expect("skipped");
    assert!(crash.contains("--service-cmd"), "{crash}");
    let off = outside.skip_reason(&lesson("keys-ignored")).expect("skipped");
    assert!(off.contains("--dedup off"), "{off}");
    assert!(outside.skip_reason(&lesson("exactly-once")).is_none());
    let with_cmd = Outside::new("http://127.0.0.1:9", None, Some("true".into()))
        .await
        .expect("outside");
    assert!(with_cmd.skip_reason(&lesson("crash-after-commit")).is_none());
    // The late retry also needs to know how long stored answers live.
    let stages = exercise::stages().expect("stages");
    let late = with_cmd.skip_reason(&stages[4].scenario).expect("skipped");
    assert!(late.contains("answers_expire_after"), "{late}");
}

/// A free loopback port for a service started by command (it must be known
/// before the command runs; another process taking it meanwhile is unlikely).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ladder_against_a_started_killed_and_restarted_outside_service() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let cmd = format!(
        "exec '{EXE}' __serve-payment --listen {} --db '{}' --dedup unique --key-retention 1s",
        url.trim_start_matches("http://"),
        dir.path().join("p.db").display()
    );
    let target = dir.path().join("target.toml");
    std::fs::write(&target, "answers_expire_after = \"1s\"\n").expect("write");
    let outside = Outside::new(&url, Some(&target), Some(cmd)).await.expect("outside");
    let mut settings = settings(outside);
    settings.payments = 10;
    let ladder = exercise::play_ladder(&settings, None).await.expect("the ladder plays");
    let text = exercise::render(&ladder);
    assert!(ladder.pass, "{text}");
    assert!(ladder.stages.iter().all(|s| s.status == Status::Passed), "{text}");
    let restart = ladder.stages[2].outcome.as_ref().expect("stage 3 played");
    assert!(restart.metrics["service_restarts"] >= 1, "{text}");
    assert!(
        restart.judged.as_deref().is_some_and(|j| j.starts_with("per key")),
        "{text}"
    );
}
