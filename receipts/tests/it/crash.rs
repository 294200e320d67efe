//! The real binary as a child process, SIGKILLed while deliveries are in
//! flight, restarted on the same file: every acknowledged receipt is there
//! (acknowledged only after its COMMIT), once, and its redelivery is absorbed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::{WAIT, client, event};

/// Deliveries acknowledged before the kill: a count, not a time, so the
/// test strikes at the same point however fast the machine is.
const ACKED_BEFORE_KILL: usize = 60;
/// Senders delivering at once, each its own run of events.
const SENDERS: i64 = 8;
/// Events per sender: far more than are acknowledged before the kill.
const EVENTS_PER_SENDER: i64 = 400;

struct ServiceProcess {
    child: Child,
    base: String,
}

/// Starts `receipts` on port 0 and reads the bound address from its first
/// stdout line.
fn start(db: &Path) -> ServiceProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_receipts"))
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .env("RUST_LOG", "receipts=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn receipts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let base = line.trim().rsplit(' ').next().expect("address").to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "unexpected first line {line:?}");
    ServiceProcess { child, base }
}

/// A failing assertion must not leave a service running behind the test.
impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Senders that deliver their events one after the other, reporting each
/// event id acknowledged with a 201 on `acked`, until the service is gone.
fn start_senders(base: &str, acked: mpsc::UnboundedSender<String>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..SENDERS)
        .map(|s| {
            let (url, acked) = (format!("{base}/receipts"), acked.clone());
            tokio::spawn(async move {
                let http = client();
                for n in 1..=EVENTS_PER_SENDER {
                    let body = event(&format!("crash{s}"), n);
                    let Ok(response) = http.post(&url).json(&body).send().await else {
                        return;
                    };
                    if response.status() == 201 {
                        let _ = acked.send(body["event_id"].as_str().expect("id").to_owned());
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn sigkill_mid_burst_loses_no_acknowledged_receipt_and_redeliveries_are_absorbed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("receipts.db");
    let mut service = start(&db);
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel();
    let senders = start_senders(&service.base, acked_tx);
    let mut acked = Vec::new();
    while acked.len() < ACKED_BEFORE_KILL {
        let id = tokio::time::timeout(WAIT, acked_rx.recv())
            .await
            .expect("acks arrive")
            .expect("senders run");
        acked.push(id);
    }
    service.child.kill().expect("SIGKILL");
    service.child.wait().expect("reaped");
    for sender in senders {
        tokio::time::timeout(WAIT, sender)
            .await
            .expect("senders stop")
            .expect("sender");
    }
    // Acknowledged in the instant before the kill: still acknowledged.
    while let Ok(id) = acked_rx.try_recv() {
        acked.push(id);
    }
    let service = start(&db);
    let http = client();
    let lookup: Value = http
        .post(format!("{}/receipts/lookup", service.base))
        .json(&serde_json::json!({ "event_ids": acked }))
        .send()
        .await
        .expect("lookup")
        .json()
        .await
        .expect("JSON");
    for answer in lookup["events"].as_array().expect("events") {
        assert_eq!(
            answer["receipts"], 1,
            "an acknowledged receipt survives the kill: {answer}"
        );
    }
    for id in &acked {
        let (sender, n) = id.split_once(':').expect("ledger:n");
        let body = event(sender, n.parse().expect("n"));
        let again = http
            .post(format!("{}/receipts", service.base))
            .json(&body)
            .send()
            .await
            .expect("redelivery");
        assert_eq!(again.status(), 200, "a redelivery after the restart is absorbed: {id}");
    }
    let stats: Value = http
        .get(format!("{}/stats", service.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["receipts"].as_u64().unwrap() >= acked.len() as u64, "{stats}");
    assert_eq!(stats["invariants"]["one_receipt_per_event"], true, "{stats}");
    assert_eq!(stats["duplicates_absorbed"], acked.len(), "{stats}");
}
