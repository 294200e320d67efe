//! `--target` and `--service` must be http URLs: anything else is refused at
//! start, with the fix, before anything is sent; `--help` documents the exit
//! statuses.

use std::process::Command;

#[test]
fn a_url_without_http_is_refused_at_start_with_the_fix() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let good = format!("http://127.0.0.1:{port}");
    for (flag, bad, fix) in [
        (
            "--target",
            format!("127.0.0.1:{port}"),
            format!("did you mean http://127.0.0.1:{port}?"),
        ),
        (
            "--service",
            format!("localhost:{port}"),
            format!("did you mean http://localhost:{port}?"),
        ),
        (
            "--target",
            "https://127.0.0.1:1".to_owned(),
            "plain http only".to_owned(),
        ),
        (
            "--target",
            format!("http://127.0.0.1:{port},,http://127.0.0.1:1"),
            "URL 2 of the list is empty".to_owned(),
        ),
        (
            "--target",
            format!("http://127.0.0.1:{port},127.0.0.1:1"),
            "did you mean http://127.0.0.1:1?".to_owned(),
        ),
    ] {
        let other = if flag == "--target" { "--service" } else { "--target" };
        let output = Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["pay", "--count", "1", flag, &bad, other, &good])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {bad}: {stderr}");
        assert!(stderr.contains(&fix) && stderr.contains(flag), "{flag} {bad}: {stderr}");
    }
    let nothing = listener.accept().expect_err("nothing was sent");
    assert_eq!(nothing.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn help_documents_the_exit_statuses() {
    for command in ["pay", "resume"] {
        let output = Command::new(env!("CARGO_BIN_EXE_client"))
            .args([command, "--help"])
            .output()
            .expect("run");
        let help = String::from_utf8_lossy(&output.stdout);
        for needle in [
            "Exit status: 0",
            "1 the verdict differs",
            "3 INCONCLUSIVE",
            "130 interrupted",
        ] {
            assert!(help.contains(needle), "{command}: {needle:?} missing: {help}");
        }
    }
}
