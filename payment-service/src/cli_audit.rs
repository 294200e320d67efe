//! `payment-service audit --db FILE`: the full audit of a database file,
//! from the command line, with the service running on it or stopped (it only
//! reads, each chunk in its own short transaction). Progress goes to stderr,
//! the report (JSON, as `GET /audit` answers) to stdout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use eo_core::wire::AuditVerdict;

use crate::audit::{self, Balances, Progress};
use crate::schema;

/// Progress lines at most this often.
const PROGRESS_EVERY_MS: u64 = 2_000;

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The SQLite database to audit (opened read-only)
    #[arg(long)]
    db: PathBuf,
}

/// Exit statuses: the figures agree, disagree, or there is no verdict.
pub const EXIT_AGREE: i32 = 0;
pub const EXIT_DISAGREE: i32 = 1;
pub const EXIT_INCONCLUSIVE: i32 = 2;

/// Audits `--db` and returns the exit status for its verdict.
pub fn run(args: &AuditArgs) -> anyhow::Result<i32> {
    let db = crate::writer::describe(&args.db);
    anyhow::ensure!(
        crate::config::postgres_url(&args.db).is_some() || args.db.is_file(),
        "there is no database file at {db}"
    );
    let mut conn = schema::open_reader(&args.db).with_context(|| format!("cannot open {db}"))?;
    let mut last = Instant::now();
    let mut progress = |p: Progress| {
        if last.elapsed() >= Duration::from_millis(PROGRESS_EVERY_MS) {
            eprintln!("audit: {}: {} of about {} read", p.phase, p.read, p.of);
            last = Instant::now();
        }
    };
    let audited =
        audit::run(&mut conn, Balances::Check, &mut progress).with_context(|| format!("the audit of {db} failed"))?;
    let report = &audited.report;
    println!("{}", serde_json::to_string_pretty(report)?);
    eprintln!(
        "audit of {db}: {:?} after {} payments in {} ms{}",
        report.verdict,
        report.payments_read + report.rows_after_start,
        report.elapsed_ms,
        report.findings.iter().map(|f| format!("\n  - {f}")).collect::<String>()
    );
    Ok(match report.verdict {
        AuditVerdict::Agree => EXIT_AGREE,
        AuditVerdict::Disagree => EXIT_DISAGREE,
        AuditVerdict::Inconclusive => EXIT_INCONCLUSIVE,
    })
}
