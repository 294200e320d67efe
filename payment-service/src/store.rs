//! Every read and write of the ledger as a plain function over a connection.
//! No HTTP and no threads here, so the writer thread, the readers and the
//! tests all share the same code, and time comes in as an argument
//! (`now_ms`), which keeps lease and retention logic testable without
//! waiting. The tables are described in `schema.rs`.
//!
//! Every write adds its change to the maintained figures to `totals`, a
//! [`Delta`] the caller applies ([`totals::add`]) in the same transaction
//! before it commits (the writer: once per batch). Every write does its
//! checks before its first write: a write that is refused leaves nothing
//! behind, so the writer needs no savepoint around it (see `writer.rs`).

use std::borrow::Cow;

use crate::db::{Connection, Dialect, OptionalExtension, Row, params};

use crate::balances;
use crate::db_error::{DbError, DbResult};
use crate::outbox;
use crate::payment::{Payment, PaymentRequest};
use crate::totals::{self, Delta};

pub(crate) use crate::schema::{open_reader, open_writer};

/// When a payment is booked and whether its event goes to the outbox
/// (`--notify outbox`): what every write that may insert a payment gets, so
/// [`insert_payment`], the one function that inserts payment rows, writes
/// the event in the same transaction whichever path called it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Book {
    pub now_ms: i64,
    pub outbox: bool,
}

impl Book {
    /// At `now_ms`, without an outbox event.
    pub fn at(now_ms: i64) -> Book {
        Book { now_ms, outbox: false }
    }
}

/// Stored responses deleted per reaping step: a few milliseconds of the
/// writer, so payments never wait long behind it; the reaper repeats steps
/// while they come back full.
pub const REAP_ROWS_MAX: usize = 2_000;

/// Who holds a lease on a key in flight: a replica (see `db_lock.rs`) and,
/// within it, one request (a token). Only that request may complete the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub replica: i64,
    pub token: i64,
}

/// Expires the leases of replicas known to be dead (their liveness lock was
/// free), and leases without a replica (written by a version before replicas,
/// whose process is gone: a current file is opened by current versions only),
/// so their retries take over at once instead of waiting out the lease.
/// Never every lease: another replica on the file may be alive and working.
/// Visits only the keys in flight (their own index).
pub fn expire_leases_of(conn: &Connection, dead_replicas: &[i64]) -> DbResult<usize> {
    let dead = serde_json::to_string(dead_replicas).map_err(|e| DbError::Other(format!("ids not encodable: {e}")))?;
    let sql = match conn.dialect() {
        Dialect::Sqlite => {
            "UPDATE idempotency_keys INDEXED BY idempotency_keys_in_flight SET locked_until_ms = 0
             WHERE state = 'in_progress' AND locked_until_ms <> 0
               AND (lease_replica IS NULL OR lease_replica IN (SELECT value FROM json_each(?1)))"
        }
        Dialect::Postgres => {
            "UPDATE idempotency_keys SET locked_until_ms = 0
             WHERE state = 'in_progress' AND locked_until_ms <> 0
               AND (lease_replica IS NULL OR lease_replica IN
                    (SELECT value::bigint FROM json_array_elements_text(CAST(?1 AS TEXT)::json)))"
        }
    };
    conn.prepare_cached(sql)?.execute([dead])
}

/// What happened to a keyed request inside the writer's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The payment was executed by this request; the body is its first answer.
    /// `takeover`: the key had been left in flight by a dead worker.
    Executed {
        payment: Payment,
        body: String,
        takeover: bool,
    },
    /// A batch was executed by this request (`batch.rs`): every item's
    /// payment, and the answer stored under the batch's key.
    ExecutedBatch {
        payments: Vec<Payment>,
        body: String,
        takeover: bool,
    },
    /// The key was seen before with the same request: its first answer again.
    /// `from_ledger` is true when the stored response had expired and the
    /// answer was rebuilt from the payment row (a late retry, still caught).
    Replayed {
        status: u16,
        body: String,
        payment_id: Option<i64>,
        from_ledger: bool,
    },
    /// The key names a different request; nothing was stored.
    Mismatch,
    /// The first request with this key still holds a valid lease.
    InFlight,
    /// The key is now leased to this request (`takeover`: from a dead worker).
    Claimed { takeover: bool },
    /// The lease of this request was taken over (or wiped) before it could
    /// complete; the new owner finishes the payment.
    LostLease,
    /// The request failed in a way that would repeat (see
    /// [`DbError::is_permanent`]); nothing was stored and its key was released.
    Refused(DbError),
}

/// A key's row before this request, for the figures kept on keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyBefore {
    Absent,
    InFlight,
    Completed,
}

impl KeyBefore {
    /// The change to (stored responses, keys in flight) when the key moves
    /// from this state to `in_flight` or to completed.
    pub(crate) fn delta_to(self, in_flight: bool) -> Delta {
        let was = |s: KeyBefore| i64::from(self == s);
        let (stored_now, in_flight_now) = if in_flight { (0, 1) } else { (1, 0) };
        Delta {
            stored_responses: stored_now - was(KeyBefore::Completed),
            keys_in_flight: in_flight_now - was(KeyBefore::InFlight),
            ..Delta::default()
        }
    }
}

/// The decision for a keyed request before anything is written.
pub(crate) enum Decision {
    Proceed { before: KeyBefore },
    Done(Outcome),
}

struct KeyRow {
    fingerprint: String,
    in_progress: bool,
    locked_until_ms: i64,
    payment_id: Option<i64>,
    response_status: Option<u16>,
    response_body: Option<String>,
    completed_at_ms: Option<i64>,
}

/// A key row's seven columns of `idempotency_keys AS k`, in the order
/// [`key_row_from`] reads them: one list for both statements that read them.
macro_rules! key_columns {
    () => {
        "k.fingerprint, k.state, k.locked_until_ms, k.payment_id, k.response_status, k.response_body, k.completed_at_ms"
    };
}

fn key_row(conn: &Connection, key: &str) -> DbResult<Option<KeyRow>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        key_columns!(),
        " FROM idempotency_keys AS k WHERE k.idem_key = ?1"
    ))?
    .query_row([key], |r| key_row_from(r, 0))
    .optional()
}

/// A key's row from the seven columns of `key_columns!` starting at `at`.
fn key_row_from(r: &Row<'_>, at: usize) -> DbResult<KeyRow> {
    Ok(KeyRow {
        fingerprint: r.get(at)?,
        in_progress: r.get::<_, String>(at + 1)? == "in_progress",
        locked_until_ms: r.get::<_, Option<i64>>(at + 2)?.unwrap_or(0),
        payment_id: r.get(at + 3)?,
        response_status: r.get(at + 4)?,
        response_body: r.get(at + 5)?,
        completed_at_ms: r.get(at + 6)?,
    })
}

/// A key's row and the first payment carrying the key, each if any, in one
/// statement (always one row: NULLs for what is absent).
fn key_row_and_first_payment(conn: &Connection, key: &str) -> DbResult<(Option<KeyRow>, Option<Payment>)> {
    Ok(conn.prepare_cached(KEY_AND_FIRST_PAYMENT)?.query_row([key], |r| {
        // The key's fingerprint and the payment's id are never NULL in a row.
        let row = r.get::<_, Option<String>>(0)?.map(|_| key_row_from(r, 0)).transpose()?;
        let first = r
            .get::<_, Option<i64>>(7)?
            .map(|_| payment_from_row_at(r, 7))
            .transpose()?;
        Ok((row, first))
    })?)
}

/// The columns of `key_columns!`, then those of `PAYMENT_COLUMNS`.
const KEY_AND_FIRST_PAYMENT: &str = concat!(
    "SELECT ",
    key_columns!(),
    ",
            p.id, p.src, p.dest, p.amount_minor, p.idem_key, p.created_at_ms
     FROM (SELECT 1 AS one) AS q
     LEFT JOIN idempotency_keys AS k ON k.idem_key = ?1
     LEFT JOIN payments AS p ON p.id = (SELECT min(id) FROM payments WHERE idem_key = ?1)"
);

/// What a keyed request is to the key rules: a single payment, or a batch
/// (`batch.rs`). `decide` and `claim` serve both.
pub(crate) trait Keyed {
    /// What "the same request" means for a reused key (a payment's is made
    /// once, when it is parsed; a batch's is built from its items).
    fn fingerprint(&self) -> Cow<'_, str>;
    /// What the ledger says about a retry under `key` whose stored answer is
    /// gone: its first answer rebuilt, a mismatch, or None (never paid).
    fn in_ledger(&self, conn: &Connection, key: &str) -> DbResult<Option<Outcome>>;
}

impl Keyed for PaymentRequest {
    fn fingerprint(&self) -> Cow<'_, str> {
        Cow::Borrowed(PaymentRequest::fingerprint(self))
    }

    fn in_ledger(&self, conn: &Connection, key: &str) -> DbResult<Option<Outcome>> {
        Ok(first_payment_with_key(conn, key)?.map(|payment| answer_from_ledger(&payment, self)))
    }
}

/// What a key's row alone says about a request.
enum RowSays {
    Mismatch,
    InFlight,
    /// The stored answer, still within the retention.
    Replay(Outcome),
    /// In flight, but the lease has run out: a dead worker's key.
    Expired,
    /// Completed, but its stored answer was reaped or is past the retention.
    Stale,
}

fn read_row(row: KeyRow, request: &impl Keyed, now_ms: i64, retention_ms: i64) -> RowSays {
    if row.fingerprint != request.fingerprint() {
        return RowSays::Mismatch;
    }
    if row.in_progress {
        return if row.locked_until_ms > now_ms {
            RowSays::InFlight
        } else {
            RowSays::Expired
        };
    }
    match row.fresh_answer(now_ms, retention_ms) {
        Some(answer) => RowSays::Replay(Outcome::Replayed {
            status: answer.status,
            body: answer.body,
            payment_id: answer.payment_id,
            from_ledger: false,
        }),
        None => RowSays::Stale,
    }
}

/// A key's completed answer, still within the retention, and the request it
/// answered (its fingerprint).
#[derive(Debug, Clone)]
pub(crate) struct FreshAnswer {
    pub(crate) fingerprint: String,
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) payment_id: Option<i64>,
}

impl KeyRow {
    /// The stored answer, if the key completed and the answer is not past
    /// the retention (the reaper deletes it soon after).
    fn fresh_answer(self, now_ms: i64, retention_ms: i64) -> Option<FreshAnswer> {
        let fresh = !self.in_progress
            && self
                .completed_at_ms
                .is_some_and(|at| at.saturating_add(retention_ms) > now_ms);
        match (fresh, self.response_status, self.response_body) {
            (true, Some(status), Some(body)) => Some(FreshAnswer {
                fingerprint: self.fingerprint,
                status,
                body,
                payment_id: self.payment_id,
            }),
            _ => None,
        }
    }
}

/// The answer stored under `key`, whatever request it answered, while it is
/// within the retention: what the workshop's exercise may read.
pub(crate) fn fresh_answer(
    conn: &Connection,
    key: &str,
    now_ms: i64,
    retention_ms: i64,
) -> DbResult<Option<FreshAnswer>> {
    Ok(key_row(conn, key)?.and_then(|row| row.fresh_answer(now_ms, retention_ms)))
}

/// The stored answer to a retry, if its key's row holds one that is certain
/// (same request, completed, within the retention): what a reader may answer
/// without the writer. Anything else (no row, in flight, a mismatch, an
/// expired answer) is None: the writer decides.
pub fn stored_answer(
    conn: &Connection,
    request: &PaymentRequest,
    key: &str,
    now_ms: i64,
    retention_ms: i64,
) -> DbResult<Option<Outcome>> {
    Ok(
        match key_row(conn, key)?.map(|row| read_row(row, request, now_ms, retention_ms)) {
            Some(RowSays::Replay(outcome)) => Some(outcome),
            _ => None,
        },
    )
}

/// Looks at everything known about `key` and decides, without writing.
pub(crate) fn decide(
    conn: &Connection,
    request: &impl Keyed,
    key: &str,
    now_ms: i64,
    retention_ms: i64,
) -> DbResult<Decision> {
    let row = key_row(conn, key)?;
    decide_from(row, request, (now_ms, retention_ms), || request.in_ledger(conn, key))
}

/// [`decide`] for a single payment: its key's row and the first payment
/// carrying its key read in one statement (one round trip on PostgreSQL,
/// one statement less per new payment on SQLite).
fn decide_payment(
    conn: &Connection,
    request: &PaymentRequest,
    key: &str,
    now_ms: i64,
    retention_ms: i64,
) -> DbResult<Decision> {
    let (row, first) = key_row_and_first_payment(conn, key)?;
    let in_ledger = || Ok(first.map(|payment| answer_from_ledger(&payment, request)));
    decide_from(row, request, (now_ms, retention_ms), in_ledger)
}

/// The decision from a key's row (if any) and, when the row holds no live
/// answer, what the ledger says (`in_ledger`).
fn decide_from(
    row: Option<KeyRow>,
    request: &impl Keyed,
    (now_ms, retention_ms): (i64, i64),
    in_ledger: impl FnOnce() -> DbResult<Option<Outcome>>,
) -> DbResult<Decision> {
    let before = match row.map(|row| read_row(row, request, now_ms, retention_ms)) {
        None => KeyBefore::Absent,
        Some(RowSays::Mismatch) => return Ok(Decision::Done(Outcome::Mismatch)),
        Some(RowSays::InFlight) => return Ok(Decision::Done(Outcome::InFlight)),
        Some(RowSays::Replay(outcome)) => return Ok(Decision::Done(outcome)),
        Some(RowSays::Expired) => KeyBefore::InFlight,
        Some(RowSays::Stale) => KeyBefore::Completed,
    };
    // No live stored response: the ledger itself is the authority. The key
    // stays on the payment forever, so a late retry is still recognised.
    if let Some(outcome) = in_ledger()? {
        return Ok(Decision::Done(outcome));
    }
    Ok(Decision::Proceed { before })
}

/// The answer to a request whose key already has `payment` in the ledger: the
/// first answer rebuilt from the row (byte-identical, rendering is
/// deterministic), or a mismatch if the request differs.
pub fn answer_from_ledger(payment: &Payment, request: &PaymentRequest) -> Outcome {
    if payment.matches(request) {
        Outcome::Replayed {
            status: 201,
            body: payment.to_json(),
            payment_id: Some(payment.id),
            from_ledger: true,
        }
    } else {
        Outcome::Mismatch
    }
}

/// Claims and executes in one step: the path for `--dedup unique` without a
/// processing delay. SQLite's single writer serialises duplicates, so they
/// replay and never see an in-flight key.
pub fn pay_keyed(
    conn: &Connection,
    request: &PaymentRequest,
    key: &str,
    (book, retention_ms): (Book, i64),
    totals: &mut Delta,
) -> DbResult<Outcome> {
    match decide_payment(conn, request, key, book.now_ms, retention_ms)? {
        Decision::Done(outcome) => Ok(outcome),
        // decide found no payment with the key: it is a new one.
        Decision::Proceed { before } => execute_keyed(conn, request, key, (book, before, Some(0)), totals),
    }
}

/// Phase one of the two-phase path: lease the key to `lease` until `now + lease_ms`.
pub fn claim(
    conn: &Connection,
    request: &impl Keyed,
    (key, lease): (&str, Lease),
    (now_ms, lease_ms, retention_ms): (i64, i64, i64),
    totals: &mut Delta,
) -> DbResult<Outcome> {
    match decide(conn, request, key, now_ms, retention_ms)? {
        Decision::Done(outcome) => Ok(outcome),
        Decision::Proceed { before } => {
            conn.prepare_cached(
                "INSERT INTO idempotency_keys
                     (idem_key, fingerprint, state, lock_owner, lease_replica, locked_until_ms, created_at_ms)
                 VALUES (?1, ?2, 'in_progress', ?3, ?4, ?5, ?6)
                 ON CONFLICT (idem_key) DO UPDATE SET
                     fingerprint = excluded.fingerprint, state = 'in_progress', lock_owner = excluded.lock_owner,
                     lease_replica = excluded.lease_replica, locked_until_ms = excluded.locked_until_ms,
                     payment_id = NULL, response_status = NULL, response_body = NULL, completed_at_ms = NULL",
            )?
            .execute(params![
                key,
                &*request.fingerprint(),
                lease.token,
                lease.replica,
                now_ms.saturating_add(lease_ms),
                now_ms
            ])?;
            *totals += before.delta_to(true);
            Ok(Outcome::Claimed {
                takeover: before == KeyBefore::InFlight,
            })
        }
    }
}

/// Phase two: execute, but only if `lease` still owns the key (fencing: a
/// worker whose lease was taken over, by time or because its replica was
/// thought dead, must not pay a second time).
pub fn complete(
    conn: &Connection,
    request: &PaymentRequest,
    (key, lease): (&str, Lease),
    book: Book,
    totals: &mut Delta,
) -> DbResult<Outcome> {
    if !owns_lease(conn, key, lease)? {
        return Ok(Outcome::LostLease);
    }
    match execute_keyed(conn, request, key, (book, KeyBefore::InFlight, None), totals) {
        Ok(outcome) => Ok(outcome),
        // Refused before its first write (checks first, and a failed
        // statement undoes itself): nothing of it is stored. Free the key,
        // or every retry would meet "in flight" until the lease ran out.
        Err(e) if e.is_permanent() => {
            free_lease(conn, (key, lease), totals)?;
            Ok(Outcome::Refused(e))
        }
        Err(e) => Err(e),
    }
}

/// Does `token` still own the lease on `key`?
pub(crate) fn owns_lease(conn: &Connection, key: &str, lease: Lease) -> DbResult<bool> {
    let owner: Option<(Option<i64>, Option<i64>)> = conn
        .prepare_cached(
            "SELECT lock_owner, lease_replica FROM idempotency_keys WHERE idem_key = ?1 AND state = 'in_progress'",
        )?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(owner == Some((Some(lease.token), Some(lease.replica))))
}

/// Deletes `lease` on `key` after a refusal, so a retry need not wait for
/// it to run out.
pub(crate) fn free_lease(conn: &Connection, (key, lease): (&str, Lease), totals: &mut Delta) -> DbResult<()> {
    let freed = conn
        .prepare_cached("DELETE FROM idempotency_keys WHERE idem_key = ?1 AND lock_owner = ?2 AND lease_replica = ?3")?
        .execute(params![key, lease.token, lease.replica])?;
    totals.keys_in_flight -= i64::try_from(freed).unwrap_or(0);
    Ok(())
}

/// Inserts the payment with its permanent unique key, moves the money and
/// stores the answer: all in the caller's transaction, so all or nothing.
/// `earlier`: payments with the key, when the caller knows.
fn execute_keyed(
    conn: &Connection,
    request: &PaymentRequest,
    key: &str,
    (book, before, earlier): (Book, KeyBefore, Option<i64>),
    totals: &mut Delta,
) -> DbResult<Outcome> {
    execute_with_answer(conn, request, (key, true), (book, before, earlier), totals)
}

/// Books a payment for the workshop's exercise (`--dedup exercise`): the
/// payment under `key` (in the UNIQUE column when `unique`) and its stored
/// answer, with their change to the figures, like every other write.
pub(crate) fn book_exercise(
    conn: &Connection,
    request: &PaymentRequest,
    (key, unique): (&str, bool),
    book: Book,
    totals: &mut Delta,
) -> DbResult<Outcome> {
    let before = match key_row(conn, key)? {
        None => KeyBefore::Absent,
        Some(row) if row.in_progress => KeyBefore::InFlight,
        Some(_) => KeyBefore::Completed,
    };
    execute_with_answer(conn, request, (key, unique), (book, before, None), totals)
}

/// The payment under `key`, the money moved and the answer stored under the
/// key, all in the caller's transaction.
fn execute_with_answer(
    conn: &Connection,
    request: &PaymentRequest,
    (key, unique): (&str, bool),
    (book, before, earlier): (Book, KeyBefore, Option<i64>),
    totals: &mut Delta,
) -> DbResult<Outcome> {
    let (payment, delta) = insert_payment(conn, request, (Some(key), earlier), unique, book)?;
    // From the request's rendered head: the same bytes as `payment.to_json()`.
    let body = request.answer(payment.id, Some(key), payment.created_at_ms);
    store_answer(
        conn,
        (key, request.fingerprint()),
        (Some(payment.id), &body),
        (book.now_ms, before),
    )?;
    *totals += delta;
    *totals += before.delta_to(false);
    Ok(Outcome::Executed {
        payment,
        body,
        takeover: before == KeyBefore::InFlight,
    })
}

/// Stores the answer (a 201 with `body`) under `key`, completing it. A key
/// that had no row (`before`) gets a plain `INSERT`: an upsert makes SQLite
/// open a statement journal for every payment (its update part checks the
/// foreign key on `payment_id`).
pub(crate) fn store_answer(
    conn: &Connection,
    (key, fingerprint): (&str, &str),
    (payment_id, body): (Option<i64>, &str),
    (now_ms, before): (i64, KeyBefore),
) -> DbResult<()> {
    let sql = match before {
        KeyBefore::Absent => INSERT_ANSWER,
        KeyBefore::InFlight | KeyBefore::Completed => UPSERT_ANSWER,
    };
    conn.prepare_cached(sql)?
        .execute(params![key, fingerprint, payment_id, body, now_ms])?;
    Ok(())
}

/// The completed key's row, written once for both statements below.
macro_rules! insert_answer {
    () => {
        "INSERT INTO idempotency_keys
     (idem_key, fingerprint, state, lock_owner, locked_until_ms, payment_id, response_status, response_body, created_at_ms, completed_at_ms)
     VALUES (?1, ?2, 'completed', NULL, NULL, ?3, 201, ?4, ?5, ?5)"
    };
}

const INSERT_ANSWER: &str = insert_answer!();

const UPSERT_ANSWER: &str = concat!(
    insert_answer!(),
    "
     ON CONFLICT (idem_key) DO UPDATE SET
         fingerprint = excluded.fingerprint, state = 'completed', lock_owner = NULL, lease_replica = NULL,
         locked_until_ms = NULL, payment_id = excluded.payment_id, response_status = 201,
         response_body = excluded.response_body, completed_at_ms = excluded.completed_at_ms"
);

/// Inserts a payment without any key check: keyless requests, `--dedup off`,
/// and the insert step of `check-then-insert`.
pub fn insert_unchecked(
    conn: &Connection,
    request: &PaymentRequest,
    key: Option<&str>,
    book: Book,
    totals: &mut Delta,
) -> DbResult<Payment> {
    let (payment, delta) = insert_payment(conn, request, (key, None), false, book)?;
    *totals += delta;
    Ok(payment)
}

/// Books a payment: checks both balances (nothing is written if either would
/// leave the `i64` range), inserts the row (its one statement that may be
/// refused, and the first write), then writes the balances and, with
/// `book.outbox`, the payment's event: the only place a payment row is
/// inserted, so no path can commit a payment without its event (or an event
/// without its payment). Returns the change to the figures. `earlier`: the
/// payments already carrying the key, if the caller knows (else they are
/// counted here).
pub(crate) fn insert_payment(
    conn: &Connection,
    request: &PaymentRequest,
    (key, earlier): (Option<&str>, Option<i64>),
    unique: bool,
    book: Book,
) -> DbResult<(Payment, Delta)> {
    let now_ms = book.now_ms;
    let (src_name, dest_name, amount) = (request.src(), request.dest(), request.amount_minor());
    let dedup_key = if unique { key } else { None };
    let out_of_range = |account: &str| DbError::BalanceOutOfRange {
        account: account.to_owned(),
    };
    let (src, dest) = balances::read(conn, src_name, dest_name)?;
    let src_balance = src
        .unwrap_or(0)
        .checked_sub(amount)
        .ok_or_else(|| out_of_range(src_name))?;
    let dest_balance = dest
        .unwrap_or(0)
        .checked_add(amount)
        .ok_or_else(|| out_of_range(dest_name))?;
    let earlier = match (key, earlier) {
        (Some(_), Some(known)) => known,
        (Some(key), None) => payments_with_key_up_to_two(conn, key)?,
        (None, _) => 0,
    };
    // The one statement that may be refused: alone, so a refusal leaves
    // the transaction usable on both engines.
    let id: i64 = conn.alone(|conn| {
        conn.insert_returning_id(
            INSERT_PAYMENT,
            params![src_name, dest_name, amount, key, dedup_key, now_ms],
        )
    })?;
    balances::write(
        conn,
        (src_name, src_balance, src.is_some()),
        (dest_name, dest_balance, dest.is_some()),
    )?;
    if book.outbox {
        outbox::add_event(conn, id, now_ms)?;
    }
    let delta = Delta {
        payments: 1,
        last_payment_id: id,
        amount_minor: amount,
        keyed_payments: i64::from(key.is_some()),
        distinct_keys: i64::from(key.is_some() && earlier == 0),
        duplicate_keys: i64::from(earlier == 1),
        accounts: i64::from(src.is_none()) + i64::from(dest.is_none()),
        outbox_pending: i64::from(book.outbox),
        ..Delta::default()
    };
    let payment = Payment {
        id,
        src: src_name.to_owned(),
        dest: dest_name.to_owned(),
        amount_minor: amount,
        idempotency_key: key.map(str::to_owned),
        created_at_ms: now_ms,
    };
    Ok((payment, delta))
}

/// Payments already carrying `key`, counted up to two (all a key's figures
/// need: is it new, does it become a duplicate).
fn payments_with_key_up_to_two(conn: &Connection, key: &str) -> DbResult<i64> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM (SELECT 1 FROM payments WHERE idem_key = ?1 LIMIT 2) AS earlier")?
        .query_row([key], |r| r.get(0))?)
}

/// The statements every new payment runs on SQLite (with
/// [`KEY_AND_FIRST_PAYMENT`], [`INSERT_ANSWER`] and, once per batch and
/// account, those of `balances.rs`): each writes or reads one row, so none
/// needs a statement journal or a temporary b-tree (a test reads their
/// programs).
const INSERT_PAYMENT: &str = "INSERT INTO payments (src, dest, amount_minor, idem_key, dedup_key, created_at_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

fn payment_from_row(r: &Row<'_>) -> DbResult<Payment> {
    payment_from_row_at(r, 0)
}

/// A payment from the six columns of [`PAYMENT_COLUMNS`] starting at `at`.
fn payment_from_row_at(r: &Row<'_>, at: usize) -> DbResult<Payment> {
    Ok(Payment {
        id: r.get(at)?,
        src: r.get(at + 1)?,
        dest: r.get(at + 2)?,
        amount_minor: r.get(at + 3)?,
        idempotency_key: r.get(at + 4)?,
        created_at_ms: r.get(at + 5)?,
    })
}

const PAYMENT_COLUMNS: &str = "id, src, dest, amount_minor, idem_key, created_at_ms";

pub fn first_payment_with_key(conn: &Connection, key: &str) -> DbResult<Option<Payment>> {
    conn.prepare_cached(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE idem_key = ?1 ORDER BY id LIMIT 1"
    ))?
    .query_row([key], payment_from_row)
    .optional()
}

pub fn payment(conn: &Connection, id: i64) -> DbResult<Option<Payment>> {
    conn.prepare_cached(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?1"))?
        .query_row([id], payment_from_row)
        .optional()
}

/// Payments in id order after `after_id`, at most `limit`, optionally only
/// those carrying `key`.
pub fn payments(conn: &Connection, after_id: i64, limit: usize, key: Option<&str>) -> DbResult<Vec<Payment>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let page = match key {
        Some(key) => conn
            .prepare_cached(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE idem_key = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))?
            .query_map(params![key, after_id, limit], payment_from_row)?,
        None => conn
            .prepare_cached(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?
            .query_map(params![after_id, limit], payment_from_row)?,
    };
    Ok(page)
}

/// The payments whose key is one of `keys` and whose id is above `after_id`,
/// in id order, at most `limit`. The keys travel as one JSON array bound to
/// `json_each`, so the statement is prepared once whatever their number;
/// `INDEXED BY` makes SQLite refuse to run it rather than fall back to a scan
/// (each key is one search of `payments_by_idem_key` on `(idem_key, id)`).
pub fn payments_by_keys(conn: &Connection, keys: &[String], after_id: i64, limit: usize) -> DbResult<Vec<Payment>> {
    let keys = serde_json::to_string(keys).map_err(|e| DbError::Other(format!("keys not encodable: {e}")))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = match conn.dialect() {
        Dialect::Sqlite => LOOKUP_SQL,
        Dialect::Postgres => LOOKUP_SQL_PG,
    };
    let page = conn
        .prepare_cached(sql)?
        .query_map(params![keys, after_id, limit], payment_from_row)?;
    Ok(page)
}

const LOOKUP_SQL: &str = "SELECT id, src, dest, amount_minor, idem_key, created_at_ms
     FROM payments INDEXED BY payments_by_idem_key
     WHERE idem_key IN (SELECT value FROM json_each(?1)) AND id > ?2
     ORDER BY id LIMIT ?3";

/// PostgreSQL's form: the keys as the elements of a JSON array of text.
const LOOKUP_SQL_PG: &str = "SELECT id, src, dest, amount_minor, idem_key, created_at_ms
     FROM payments
     WHERE idem_key IN (SELECT value FROM json_array_elements_text(CAST(?1 AS TEXT)::json)) AND id > ?2
     ORDER BY id LIMIT ?3";

/// Counts of what `DELETE /payments` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Wiped {
    pub payments: usize,
    pub accounts: usize,
    pub keys: usize,
}

impl Wiped {
    /// What a wipe of a ledger with these maintained figures removes.
    pub(crate) fn of(f: &totals::Figures) -> Wiped {
        let count = |n: i64| usize::try_from(n).unwrap_or(0);
        Wiped {
            payments: count(f.payments),
            accounts: count(f.accounts),
            keys: count(f.stored_responses + f.keys_in_flight),
        }
    }
}

/// Deletes every payment, key and balance where they are, and starts the
/// figures (and the ledger uid) afresh. O(n): the writer uses it only when
/// it cannot start a fresh database file instead (see `generation.rs`).
pub fn wipe(conn: &Connection) -> DbResult<Wiped> {
    if conn.dialect() == Dialect::Postgres {
        // One statement, O(1), in the caller's transaction; ids start at 1
        // again, as in a fresh SQLite file. The counts are the maintained ones.
        let wiped = Wiped::of(&totals::read(conn)?.figures);
        conn.execute_batch("TRUNCATE idempotency_keys, outbox, payments, accounts RESTART IDENTITY")?;
        totals::reset(conn, &totals::Figures::default())?;
        outbox::new_ledger_id(conn)?;
        return Ok(wiped);
    }
    let keys = conn.execute("DELETE FROM idempotency_keys", ())?;
    // Events first: each refers to its payment.
    conn.execute("DELETE FROM outbox", ())?;
    let payments = conn.execute("DELETE FROM payments", ())?;
    let accounts = conn.execute("DELETE FROM accounts", ())?;
    totals::reset(conn, &totals::Figures::default())?;
    // Payment ids start again at 1: the events of the new ledger need ids
    // of their own.
    outbox::new_ledger_id(conn)?;
    Ok(Wiped {
        payments,
        accounts,
        keys,
    })
}

/// Deletes up to [`REAP_ROWS_MAX`] stored responses older than the retention
/// (oldest first, through their index). The payments keep their keys, so
/// late retries are still recognised.
pub fn reap(conn: &Connection, now_ms: i64, retention_ms: i64, totals: &mut Delta) -> DbResult<usize> {
    let reaped = conn
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE idem_key IN (
                 SELECT idem_key FROM idempotency_keys INDEXED BY idempotency_keys_by_completion
                 WHERE state = 'completed' AND completed_at_ms <= ?1 ORDER BY completed_at_ms LIMIT ?2)",
        )?
        .execute(params![now_ms.saturating_sub(retention_ms), REAP_ROWS_MAX as i64])?;
    totals.stored_responses -= i64::try_from(reaped).unwrap_or(0);
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{self, Balances};
    use crate::config::Synchronous;
    use eo_core::wire::{AuditReport, AuditVerdict};

    /// The full audit of the database behind `conn`, on a connection of its own.
    fn audit(conn: &Connection) -> AuditReport {
        let path = conn.sqlite().unwrap().path().unwrap().to_owned();
        let mut reader = Connection::open(path).unwrap();
        audit::run(&mut reader, Balances::Check, &mut |_| {}).unwrap().report
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = open_writer(&dir.path().join("t.db"), Synchronous::Normal).expect("open");
        (dir, conn)
    }

    fn request(amount_minor: i64) -> PaymentRequest {
        PaymentRequest::new("bianca".into(), "marc".into(), amount_minor)
    }

    const DAY_MS: i64 = 86_400_000;

    /// The opcodes of the program SQLite compiles `sql` to.
    fn opcodes(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
        let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let unbound = std::iter::repeat_n(rusqlite::types::Null, explain.parameter_count());
        explain
            .query_map(rusqlite::params_from_iter(unbound), |r| r.get::<_, String>(1))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Each statement of a new payment, compiled by SQLite: no temporary
    /// b-tree (`OpenEphemeral`, what `RETURNING` and `name IN (?1, ?2)`
    /// compiled to, one per payment each) and no trigger program.
    #[test]
    fn a_new_payments_statements_build_no_temporary_btree() {
        let (_dir, conn) = db();
        let conn = conn.sqlite().unwrap();
        for sql in [
            KEY_AND_FIRST_PAYMENT,
            INSERT_PAYMENT,
            balances::BALANCES,
            balances::UPDATE_BALANCE,
            balances::INSERT_ACCOUNT,
            INSERT_ANSWER,
        ] {
            let opcodes = opcodes(conn, sql);
            assert!(opcodes.iter().any(|op| op == "Halt"), "{sql}: {opcodes:?}");
            for unwanted in ["OpenEphemeral", "Program"] {
                assert!(
                    !opcodes.iter().any(|op| op == unwanted),
                    "{sql} runs {unwanted}: {opcodes:?}"
                );
            }
        }
        let returning = opcodes(conn, &format!("{INSERT_PAYMENT} RETURNING id"));
        assert!(
            returning.iter().any(|op| op == "OpenEphemeral"),
            "the check no longer sees what RETURNING costs: {returning:?}"
        );
    }

    /// Runs a write and applies its change to the totals, as the writer does.
    fn with_totals<T>(conn: &Connection, write: impl FnOnce(&mut Delta) -> DbResult<T>) -> DbResult<T> {
        let mut delta = Delta::default();
        let result = write(&mut delta)?;
        totals::add(conn, &delta)?;
        Ok(result)
    }

    fn pay(conn: &Connection, r: &PaymentRequest, key: &str, now_ms: i64, retention_ms: i64) -> DbResult<Outcome> {
        with_totals(conn, |d| pay_keyed(conn, r, key, (Book::at(now_ms), retention_ms), d))
    }

    /// Replica 7's lease number `token`.
    fn lease(token: i64) -> Lease {
        Lease { replica: 7, token }
    }

    fn claim_t(
        conn: &Connection,
        r: &PaymentRequest,
        key: &str,
        lease: Lease,
        now: i64,
        lease_ms: i64,
        retention: i64,
    ) -> DbResult<Outcome> {
        with_totals(conn, |d| claim(conn, r, (key, lease), (now, lease_ms, retention), d))
    }

    fn complete_t(conn: &Connection, r: &PaymentRequest, key: &str, lease: Lease, now_ms: i64) -> DbResult<Outcome> {
        with_totals(conn, |d| complete(conn, r, (key, lease), Book::at(now_ms), d))
    }

    fn insert_t(conn: &Connection, r: &PaymentRequest, key: Option<&str>, now_ms: i64) -> DbResult<Payment> {
        with_totals(conn, |d| insert_unchecked(conn, r, key, Book::at(now_ms), d))
    }

    fn reap_t(conn: &Connection, now_ms: i64, retention_ms: i64) -> DbResult<usize> {
        with_totals(conn, |d| reap(conn, now_ms, retention_ms, d))
    }

    #[test]
    fn executes_once_then_replays_byte_identical() {
        let (_dir, conn) = db();
        let Outcome::Executed { body, payment, .. } = pay(&conn, &request(100), "k", 1000, DAY_MS).unwrap() else {
            panic!("first request must execute")
        };
        let replay = pay(&conn, &request(100), "k", 2000, DAY_MS).unwrap();
        assert_eq!(
            replay,
            Outcome::Replayed {
                status: 201,
                body,
                payment_id: Some(payment.id),
                from_ledger: false
            }
        );
        assert_eq!(pay(&conn, &request(200), "k", 3000, DAY_MS).unwrap(), Outcome::Mismatch);
        let report = audit(&conn);
        assert_eq!(report.verdict, AuditVerdict::Agree, "{report:?}");
        let r = report.recomputed;
        assert_eq!(
            (
                r.payments,
                r.total_amount_minor,
                r.stored_responses,
                report.accounts_off_ledger
            ),
            (1, 100, 1, Some(0))
        );
    }

    #[test]
    fn late_retry_after_retention_is_rebuilt_from_the_ledger() {
        let (_dir, conn) = db();
        let Outcome::Executed { body, payment, .. } = pay(&conn, &request(100), "k", 1000, 10).unwrap() else {
            panic!("first request must execute")
        };
        assert_eq!(reap_t(&conn, 5000, 10).unwrap(), 1);
        let replay = pay(&conn, &request(100), "k", 5000, 10).unwrap();
        assert_eq!(
            replay,
            Outcome::Replayed {
                status: 201,
                body,
                payment_id: Some(payment.id),
                from_ledger: true
            }
        );
        assert_eq!(pay(&conn, &request(999), "k", 5000, 10).unwrap(), Outcome::Mismatch);
    }

    #[test]
    fn lease_blocks_until_it_expires_then_the_old_owner_is_fenced_off() {
        let (_dir, conn) = db();
        let r = request(100);
        assert_eq!(
            claim_t(&conn, &r, "k", lease(1), 0, 1000, DAY_MS).unwrap(),
            Outcome::Claimed { takeover: false }
        );
        // Within the lease another request is told to come back later.
        assert_eq!(
            claim_t(&conn, &r, "k", lease(2), 999, 1000, DAY_MS).unwrap(),
            Outcome::InFlight
        );
        // The first worker died; after the lease a retry takes the key over.
        assert_eq!(
            claim_t(&conn, &r, "k", lease(2), 1000, 1000, DAY_MS).unwrap(),
            Outcome::Claimed { takeover: true }
        );
        // The original worker wakes up: it no longer owns the key and must not pay.
        assert_eq!(complete_t(&conn, &r, "k", lease(1), 1001).unwrap(), Outcome::LostLease);
        assert!(matches!(
            complete_t(&conn, &r, "k", lease(2), 1002).unwrap(),
            Outcome::Executed { .. }
        ));
        assert!(matches!(
            claim_t(&conn, &r, "k", lease(3), 1003, 1000, DAY_MS).unwrap(),
            Outcome::Replayed { .. }
        ));
        assert_eq!(payments(&conn, 0, 10, Some("k")).unwrap().len(), 1);
    }

    #[test]
    fn lookup_by_keys_searches_the_key_index_per_key() {
        let (_dir, conn) = db();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {LOOKUP_SQL}"))
            .unwrap()
            .query_map(params!["[\"a\",\"b\"]", 0, 10], |r| r.get::<_, String>(3))
            .unwrap();
        let text = plan.join("\n");
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH payments USING INDEX payments_by_idem_key (idem_key=? AND rowid>?)")),
            "{text}"
        );
        assert!(!plan.iter().any(|step| step.starts_with("SCAN payments")), "{text}");
    }

    #[test]
    fn lookup_by_keys_pages_in_id_order() {
        let (_dir, conn) = db();
        for key in ["a", "b", "a", "c", "a"] {
            insert_t(&conn, &request(100), Some(key), 0).unwrap();
        }
        insert_t(&conn, &request(100), None, 0).unwrap();
        let ids = |keys: &[&str], after: i64, limit: usize| -> Vec<i64> {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            payments_by_keys(&conn, &keys, after, limit)
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect()
        };
        assert_eq!(ids(&["a", "a", "zz"], 0, 10), vec![1, 3, 5]);
        assert_eq!(ids(&["c", "b"], 0, 10), vec![2, 4]);
        assert_eq!(ids(&["a", "b", "c"], 0, 2), vec![1, 2]);
        assert_eq!(ids(&["a", "b", "c"], 2, 2), vec![3, 4]);
        assert_eq!(ids(&["a", "b", "c"], 4, 2), vec![5]);
        assert!(ids(&["zz"], 0, 10).is_empty());
    }

    #[test]
    fn only_leases_of_dead_replicas_are_expired() {
        let (_dir, conn) = db();
        let r = request(100);
        let (alive, dead) = (Lease { replica: 1, token: 5 }, Lease { replica: 2, token: 5 });
        for (key, owner) in [("a", alive), ("d", dead)] {
            let claimed = with_totals(&conn, |d| claim(&conn, &r, (key, owner), (0, 1000, DAY_MS), d));
            assert_eq!(claimed.unwrap(), Outcome::Claimed { takeover: false });
        }
        assert_eq!(expire_leases_of(&conn, &[2, 3]).unwrap(), 1);
        let retry = |key: &str| with_totals(&conn, |d| claim(&conn, &r, (key, lease(9)), (1, 1000, DAY_MS), d));
        assert_eq!(retry("a").unwrap(), Outcome::InFlight, "the live replica keeps its key");
        assert_eq!(retry("d").unwrap(), Outcome::Claimed { takeover: true });
        // The same token in another replica is another lease: it cannot complete.
        assert_eq!(
            complete_t(&conn, &r, "a", Lease { replica: 2, token: 5 }, 2).unwrap(),
            Outcome::LostLease
        );
        assert_eq!(
            complete_t(&conn, &r, "d", dead, 2).unwrap(),
            Outcome::LostLease,
            "fenced off"
        );
        assert!(matches!(
            complete_t(&conn, &r, "a", alive, 3).unwrap(),
            Outcome::Executed { .. }
        ));
        assert!(matches!(
            complete_t(&conn, &r, "d", lease(9), 3).unwrap(),
            Outcome::Executed { .. }
        ));
        // A lease written before replicas existed (no replica) has no live owner.
        conn.execute_batch(
            "INSERT INTO idempotency_keys (idem_key, fingerprint, state, lock_owner, locked_until_ms, created_at_ms)
             VALUES ('old', 'x', 'in_progress', 1, 9999999999999, 0)",
        )
        .unwrap();
        assert_eq!(expire_leases_of(&conn, &[]).unwrap(), 1);
    }

    #[test]
    fn the_unique_key_is_the_last_line_of_defence() {
        let (_dir, conn) = db();
        let (_, delta) = insert_payment(&conn, &request(100), (Some("k"), None), true, Book::at(0)).unwrap();
        totals::add(&conn, &delta).unwrap();
        assert!(insert_payment(&conn, &request(100), (Some("k"), None), true, Book::at(0)).is_err());
        // Without the unique column (dedup off), duplicates are stored and counted.
        insert_t(&conn, &request(100), Some("j"), 0).unwrap();
        insert_t(&conn, &request(100), Some("j"), 0).unwrap();
        let report = audit(&conn);
        assert_eq!(report.verdict, AuditVerdict::Agree, "{report:?}");
        let r = report.recomputed;
        assert_eq!((r.payments, r.distinct_keys, r.duplicate_keys), (3, 2, 1));
        assert_eq!((r.balance_sum_minor, report.accounts_off_ledger), (0, Some(0)));
    }
}
