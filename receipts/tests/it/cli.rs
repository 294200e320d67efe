//! The binary explains itself and reports setup mistakes at once, with the fix.

use std::process::{Command, Stdio};

fn receipts(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_receipts"))
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .expect("run receipts")
}

#[test]
fn help_explains_the_service_and_its_flags() {
    let out = receipts(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "receipt per",
        "--dedup",
        "inbox",
        "off",
        "--db",
        "--listen",
        "127.0.0.1:8081",
        "--processing-delay-ms",
        "RUST_LOG",
    ] {
        assert!(text.contains(expected), "--help lacks {expected:?}:\n{text}");
    }
}

#[test]
fn setup_mistakes_fail_at_once_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no/such/dir/r.db");
    let foreign = dir.path().join("payments.db");
    std::fs::write(
        &foreign,
        b"not a database at all, but long enough to be read as one........",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--db".into(), missing_dir.display().to_string()],
            "does its directory exist?",
        ),
        (
            vec!["--db".into(), foreign.display().to_string()],
            "cannot open the database",
        ),
        (vec!["--processing-delay-ms".into(), "60001".into()], "60001"),
        (vec!["--dedup".into(), "maybe".into()], "inbox"),
        (vec!["--listen".into(), "localhost".into()], "--listen"),
    ];
    for (args, says) in cases {
        let mut all = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
        if args[0] == "--listen" {
            all.clear();
        }
        all.extend(args.clone());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = receipts(&all);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: stderr lacks {says:?}:\n{err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing announced");
    }
}
