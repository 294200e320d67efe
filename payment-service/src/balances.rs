//! The accounts' balances: read and written by [`store::insert_payment`]
//! (the one place a payment moves money), and, inside the writer's
//! transaction, written once per batch.
//!
//! Every payment changes two balances. Written per payment, that is a read
//! and two single-row writes for each payment: a fifth of the writer's
//! instructions, and nearly always the same few rows again and again. In
//! the writer's transaction ([`begin`] ... [`flush`]) the balances it has
//! read or changed are kept in memory instead ([`Pending`]): a payment reads
//! them there (or from the database, the first time in the batch) and
//! changes them there; [`flush`] writes each changed account once, just
//! before the COMMIT. Outside such a transaction (tests, the benchmark's
//! ledger fill) every change is written at once.
//!
//! What keeps this exact:
//! - only the writer writes balances, one transaction at a time (SQLite's
//!   write lock, PostgreSQL's ledger lock), so nothing else changes a row
//!   between the first read of the batch and the flush;
//! - a payment changes its balances only after its INSERT (the one
//!   statement that may be refused): a request refused before that leaves
//!   them alone, and one that fails after it makes the writer roll back and
//!   rerun the whole batch with fresh balances ([`discard`]), or, when it
//!   reruns with a savepoint per request, undo that request's changes
//!   ([`mark`], [`restore`]);
//! - a failed flush fails the COMMIT: the batch is refused, nothing stored.
//!
//! [`store::insert_payment`]: crate::store::insert_payment

use std::collections::BTreeMap;

use crate::db::{Connection, Dialect, params};
use crate::db_error::{DbError, DbResult};

/// The balances a writer's transaction has read or changed. A `BTreeMap`:
/// flushed in name order (the same statements in the same order for the
/// same batch), and a batch may touch up to two accounts per request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pending {
    accounts: BTreeMap<String, Balance>,
}

#[derive(Debug, Clone, Copy)]
struct Balance {
    /// None: the account has no row (and no payment of the batch made it).
    minor: Option<i64>,
    /// The row exists in the database (UPDATE) or not yet (INSERT).
    stored: bool,
    changed: bool,
}

/// From now on `conn`'s balances are kept in memory until [`flush`].
pub(crate) fn begin(conn: &Connection) {
    *conn.pending_balances().borrow_mut() = Some(Pending::default());
}

/// Forgets the balances kept in memory (the transaction rolled back).
pub(crate) fn discard(conn: &Connection) {
    *conn.pending_balances().borrow_mut() = None;
}

/// Writes each changed balance once and stops keeping them: call right
/// before the COMMIT.
pub(crate) fn flush(conn: &Connection) -> DbResult<()> {
    let Some(pending) = conn.pending_balances().borrow_mut().take() else {
        return Ok(());
    };
    for (name, balance) in pending.accounts {
        if let (true, Some(minor)) = (balance.changed, balance.minor) {
            write_one(conn, (&name, minor, balance.stored))?;
        }
    }
    Ok(())
}

/// What [`restore`] goes back to (a writer's savepoint for one request).
pub(crate) fn mark(conn: &Connection) -> Option<Pending> {
    conn.pending_balances().borrow().clone()
}

/// Back to `mark`: the request since it was rolled back to its savepoint.
pub(crate) fn restore(conn: &Connection, mark: Option<Pending>) {
    *conn.pending_balances().borrow_mut() = mark;
}

/// Two accounts' balances; None for an account not yet used.
pub(crate) fn read(conn: &Connection, a: &str, b: &str) -> DbResult<(Option<i64>, Option<i64>)> {
    let mut pending = conn.pending_balances().borrow_mut();
    let Some(pending) = pending.as_mut() else {
        return read_stored(conn, a, b);
    };
    if let (Some(x), Some(y)) = (pending.accounts.get(a), pending.accounts.get(b)) {
        return Ok((x.minor, y.minor));
    }
    let (x, y) = read_stored(conn, a, b)?;
    for (name, minor) in [(a, x), (b, y)] {
        pending.accounts.entry(name.to_owned()).or_insert(Balance {
            minor,
            stored: minor.is_some(),
            changed: false,
        });
    }
    Ok((pending.accounts[a].minor, pending.accounts[b].minor))
}

/// Sets two balances computed with checked arithmetic in Rust (the
/// database never does the sum: SQLite would turn an overflow into a
/// float). The accounts differ (`dest <> src` is checked before); each comes
/// with whether it existed ([`read`] said so). Kept in memory inside the
/// writer's transaction, written at once outside it.
pub(crate) fn write(conn: &Connection, a: (&str, i64, bool), b: (&str, i64, bool)) -> DbResult<()> {
    let mut pending = conn.pending_balances().borrow_mut();
    let Some(pending) = pending.as_mut() else {
        drop(pending);
        return write_stored(conn, a, b);
    };
    for (name, minor, existed) in [a, b] {
        let Some(balance) = pending.accounts.get_mut(name) else {
            return Err(DbError::Corrupt(format!(
                "the balance of {name} was changed without being read"
            )));
        };
        if balance.minor.is_some() != existed {
            return Err(DbError::Corrupt(format!(
                "the account {name} changed under its payment"
            )));
        }
        balance.minor = Some(minor);
        balance.changed = true;
    }
    Ok(())
}

/// Both balances from the database, in one statement.
fn read_stored(conn: &Connection, a: &str, b: &str) -> DbResult<(Option<i64>, Option<i64>)> {
    Ok(conn
        .prepare_cached(BALANCES)?
        .query_row(params![a, b], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Both balances to the database, one single-row statement each (on
/// SQLite a two-row upsert opens a statement journal for every payment).
/// Only writes outside the writer's transaction come here; inside it each
/// account is written once per batch by [`flush`].
fn write_stored(conn: &Connection, a: (&str, i64, bool), b: (&str, i64, bool)) -> DbResult<()> {
    write_one(conn, a)?;
    write_one(conn, b)
}

/// One account's balance: an `UPDATE` of its row, or the `INSERT` of a new
/// one (PostgreSQL: one upsert, whichever it is).
fn write_one(conn: &Connection, (name, minor, stored): (&str, i64, bool)) -> DbResult<()> {
    let sql = match (conn.dialect(), stored) {
        (Dialect::Postgres, _) => UPSERT_ACCOUNT,
        (Dialect::Sqlite, true) => UPDATE_BALANCE,
        (Dialect::Sqlite, false) => INSERT_ACCOUNT,
    };
    if conn.prepare_cached(sql)?.execute(params![name, minor])? != 1 {
        return Err(DbError::Corrupt(format!("the balance of {name} was not written")));
    }
    Ok(())
}

/// Two accounts' balances, each one search of the primary key (`name IN
/// (?1, ?2)` would build a temporary b-tree of the two names every time).
pub(crate) const BALANCES: &str = "SELECT (SELECT balance_minor FROM accounts WHERE name = ?1),
            (SELECT balance_minor FROM accounts WHERE name = ?2)";
pub(crate) const UPDATE_BALANCE: &str = "UPDATE accounts SET balance_minor = ?2 WHERE name = ?1";
pub(crate) const INSERT_ACCOUNT: &str = "INSERT INTO accounts (name, balance_minor) VALUES (?1, ?2)";
const UPSERT_ACCOUNT: &str = "INSERT INTO accounts (name, balance_minor) VALUES (?1, ?2)
     ON CONFLICT (name) DO UPDATE SET balance_minor = excluded.balance_minor";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;
    use crate::config::Config;
    use crate::db::OptionalExtension;
    use crate::payment::PaymentRequest;
    use crate::stats::Counters;
    use crate::store::{self, Book, Outcome};
    use crate::totals::Delta;
    use crate::writer::{Alone, Op};

    fn request(src: &str, dest: &str, amount_minor: i64) -> PaymentRequest {
        let amount = format!("{}.{:02}", amount_minor / 100, amount_minor % 100);
        let body = format!(r#"{{"src":"{src}","dest":"{dest}","amount":"{amount}"}}"#);
        PaymentRequest::from_json(body.as_bytes()).expect("a valid request")
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("dir");
        let conn = store::open_writer(&dir.path().join("b.db"), crate::config::Synchronous::Full).expect("open");
        (dir, conn)
    }

    /// The balance in the database, not in memory.
    fn stored(conn: &Connection, name: &str) -> Option<i64> {
        conn.query_row(
            "SELECT balance_minor FROM accounts WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()
        .expect("read")
    }

    fn pay(conn: &Connection, r: &PaymentRequest) {
        store::insert_unchecked(conn, r, None, Book::at(0), &mut Delta::default()).expect("paid");
    }

    #[test]
    fn in_a_writers_transaction_each_balance_is_written_once_at_the_flush() {
        let (_dir, conn) = db();
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        begin(&conn);
        for _ in 0..3 {
            pay(&conn, &request("ann", "bob", 100));
        }
        pay(&conn, &request("bob", "cy", 50));
        assert_eq!(
            (stored(&conn, "ann"), stored(&conn, "bob")),
            (None, None),
            "nothing written yet"
        );
        assert_eq!(read(&conn, "ann", "cy").expect("read"), (Some(-300), Some(50)));
        flush(&conn).expect("flush");
        conn.execute_batch("COMMIT").expect("commit");
        let all: Vec<_> = ["ann", "bob", "cy"].iter().map(|n| stored(&conn, n)).collect();
        assert_eq!(all, [Some(-300), Some(250), Some(50)]);
        // Outside such a transaction, each payment writes at once.
        pay(&conn, &request("ann", "bob", 1));
        assert_eq!((stored(&conn, "ann"), stored(&conn, "bob")), (Some(-301), Some(251)));
    }

    #[test]
    fn a_restored_mark_and_a_discard_forget_what_came_after() {
        let (_dir, conn) = db();
        pay(&conn, &request("ann", "bob", 10));
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        begin(&conn);
        pay(&conn, &request("ann", "bob", 1));
        let before = mark(&conn);
        pay(&conn, &request("ann", "dan", 5));
        restore(&conn, before);
        assert_eq!(read(&conn, "ann", "dan").expect("read"), (Some(-11), None));
        flush(&conn).expect("flush");
        conn.execute_batch("COMMIT").expect("commit");
        assert_eq!((stored(&conn, "ann"), stored(&conn, "dan")), (Some(-11), None));
        begin(&conn);
        pay(&conn, &request("ann", "bob", 1));
        discard(&conn);
        assert_eq!(read(&conn, "ann", "bob").expect("read"), (Some(-11), Some(11)));
    }

    /// A request that fails after its payment row is written makes the
    /// writer run the batch again with a savepoint per request: the others
    /// commit, and the balances hold their payments and nothing of it.
    #[test]
    fn a_request_failing_after_it_wrote_leaves_no_trace_in_the_balances() {
        let dir = tempfile::tempdir().expect("dir");
        let config = Config::new(dir.path().join("w.db"));
        let mut writer = Alone::open(&config, Arc::new(Counters::default())).expect("writer");
        let raw = rusqlite::Connection::open(&config.db).expect("raw");
        raw.execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON idempotency_keys WHEN NEW.idem_key = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned key'); END;",
        )
        .expect("trigger");
        let (mut ops, mut replies) = (Vec::new(), Vec::new());
        for (key, src) in [("a", "ann"), ("poison", "ann"), ("b", "bob")] {
            let (reply, rx) = oneshot::channel();
            let request = request(src, "cy", 7);
            ops.push(Op::PayKeyed {
                request,
                key: key.to_owned(),
                reply,
            });
            replies.push(rx);
        }
        writer.commit(&mut ops);
        let executed: Vec<bool> = replies
            .iter_mut()
            .map(|rx| matches!(rx.try_recv(), Ok(Ok(Outcome::Executed { .. }))))
            .collect();
        assert_eq!(executed, [true, false, true]);
        let balances: Vec<(String, i64)> = raw
            .prepare("SELECT name, balance_minor FROM accounts ORDER BY name")
            .expect("prepare")
            .query_map((), |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let expected = [("ann", -7), ("bob", -7), ("cy", 14)].map(|(n, b)| (n.to_owned(), b));
        assert_eq!(balances, expected);
        let payments: i64 = raw
            .query_row("SELECT count(*) FROM payments", (), |r| r.get(0))
            .expect("count");
        assert_eq!(payments, 2);
    }
}
