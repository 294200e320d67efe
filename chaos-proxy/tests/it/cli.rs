//! The binary: help text, startup errors, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_chaos-proxy");

#[test]
fn help_explains_every_flag() {
    let out = Command::new(BIN).arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--api",
        "--seed",
        "--config",
        "--workshop",
        "--allow-remote",
        "--max-connections",
        "--dial-timeout-ms",
        "--idle-timeout-secs",
        "bench",
        "RUST_LOG",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn startup_errors_are_reported_not_panicked() {
    let out = Command::new(BIN)
        .args(["--api", "10.9.8.7:8474"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));

    let dir = std::env::temp_dir().join(format!("chaos-proxy-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"not":"an array"}"#).expect("write");
    let out = Command::new(BIN)
        .args(["--api", "127.0.0.1:0", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("JSON array") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn serves_then_exits_cleanly_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--api", "127.0.0.1:0", "--seed", "5"])
        .env("RUST_LOG", "off")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    // The first stderr line names the API address and the seed.
    let line = guard(
        "startup line",
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stderr).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("join")
    .expect("read");
    assert!(line.contains("seed 5"), "{line}");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("api url")
        .to_owned();
    let body = guard("version", reqwest::get(format!("{url}/version")))
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(body.contains("2.12.0"));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = guard("exit", tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
