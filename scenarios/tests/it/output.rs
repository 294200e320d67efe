//! What the runner prints for a room: the real binary, a real tour with a
//! small payment count. Every line fits 100 columns; the narrative of a
//! lesson comes before its numbers; nothing from the parts' logs appears;
//! `reproduce with` repeats every option that changes the result.

use std::path::Path;
use std::process::Command;

use client::reconcile::Verdict;
use serde_json::Value;

const WIDTH: usize = scenarios::report::WIDTH_COLUMNS_MAX;

/// Runs the `scenarios` binary with `args` (no `RUST_LOG`: the default a room
/// sees) and returns (status, stdout, stderr).
fn scenarios(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scenarios"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the scenarios binary runs");
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("utf-8 output");
    (out.status, text(&out.stdout), text(&out.stderr))
}

#[test]
fn every_line_of_a_real_tour_fits_100_columns_and_no_log_interleaves() {
    let (status, stdout, stderr) = scenarios(&["--payments", "20", "--seed", "42"]);
    assert!(status.success(), "the tour passes\n{stdout}\n{stderr}");
    println!("{stdout}");
    for line in stdout.lines().chain(stderr.lines()) {
        assert!(
            line.chars().count() <= WIDTH,
            "{} columns: {line:?}",
            line.chars().count()
        );
    }
    // The parts log into files: no tracing line (a timestamp, then the
    // level) reaches the terminal.
    for marker in ["Z  WARN ", "Z ERROR ", "Z  INFO "] {
        assert!(
            !stdout.contains(marker) && !stderr.contains(marker),
            "{marker:?} leaked"
        );
    }
    // proxy-down's dial failures are counted in its report instead.
    assert!(stdout.contains("upstream dial failed"), "{stdout}");
    // Each lesson's narrative is printed before its numbers.
    let lesson = stdout.find("── 2/23. Resets and no retry").expect("lesson 2's header");
    let numbers = stdout[lesson..].find("   verdict   ").expect("lesson 2's verdict") + lesson;
    let next = stdout.find("── 3/23.").expect("lesson 3's header");
    assert!(lesson < numbers && numbers < next);
    assert!(stdout.contains("23 of 23 scenarios behaved as their lesson says."));
    assert!(stdout.contains("reproduce with: scenarios --payments 20 --seed 42\n"));
}

/// A lesson that exists only in the extra catalog, so a reproduction that
/// forgets `--catalog` cannot even find it.
const EXTRA_LESSON: &str = r#"
name = "only-here"
title = "A lesson from --catalog"
lesson = "At most once again, from a file the facilitator wrote."
expect = "too-little"

[[proxy.toxics]]
type = "reset_peer"
stream = "upstream"
toxicity = 0.4
attributes = { timeout = 1 }

[client]
key = "none"
retries = 0
"#;

/// The `reproduce with:` command of a text run, as arguments.
fn reproduction(stdout: &str) -> Vec<String> {
    let start = stdout.find("reproduce with: ").expect("a reproduce line") + "reproduce with: ".len();
    // A long command is continued on the next lines with ` \`.
    let command = stdout[start..].replace(" \\\n", " ");
    let line = command.lines().next().expect("the command");
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[0], "scenarios");
    words[1..].to_vec()
}

/// (name, moved, verdict) per row of the closing table.
fn table_rows(stdout: &str) -> Vec<(String, String, String)> {
    let table = &stdout[stdout.rfind("\nscenario ").expect("the table")..];
    table
        .lines()
        .skip(2)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let cells: Vec<&str> = l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
            let n = cells.len();
            // ..., moved, verdict, receipts, result
            (cells[0].to_owned(), cells[n - 4].to_owned(), cells[n - 3].to_owned())
        })
        .collect()
}

#[test]
fn reproduce_with_repeats_payments_seed_catalog_and_names_and_gives_the_same_results() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("only-here.toml"), EXTRA_LESSON).expect("write");
    let catalog = dir.path().to_str().expect("utf-8 path");
    let args = [
        "run",
        "only-here",
        "at-most-once",
        "--payments",
        "30",
        "--catalog",
        catalog,
    ];
    let (status, stdout, stderr) = scenarios(&args);
    assert!(status.success(), "{stdout}\n{stderr}");
    let again = reproduction(&stdout);
    for option in ["--payments", "--seed", "--catalog", "only-here", "at-most-once"] {
        assert!(again.iter().any(|w| w == option), "{option} missing from {again:?}");
    }
    assert!(again.iter().any(|w| Path::new(w) == dir.path()), "{again:?}");

    let mut json_args: Vec<&str> = again.iter().map(String::as_str).collect();
    json_args.push("--json");
    let (status, json, stderr) = scenarios(&json_args);
    assert!(status.success(), "{json}\n{stderr}");
    let json: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["payments"], 30);
    let first = table_rows(&stdout);
    let second: Vec<(String, String, String)> = json["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .map(|s| {
            let verdict: Verdict = serde_json::from_value(s["verdict"].clone()).expect("a verdict");
            let name = s["name"].as_str().expect("name").to_owned();
            (
                name,
                s["moved"].as_str().expect("moved").to_owned(),
                verdict.headline().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        first, second,
        "the reproduction moved the same money with the same verdicts"
    );
}
