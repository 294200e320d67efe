//! Plain SQL on a test's database, whichever the backend: what tests use to
//! look inside the ledger or to change it behind the service's back. The
//! synchronous PostgreSQL client runs a runtime of its own, so each of its
//! calls runs on a scoped thread (never on a thread that drives async tasks).

use std::path::Path;

use crate::postgres_admin;

pub enum Raw {
    Sqlite(rusqlite::Connection),
    Pg(Option<postgres::Client>),
}

fn on_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the SQL thread"))
}

impl Raw {
    pub fn open(db: &Path) -> Raw {
        match db.to_str().filter(|d| d.starts_with("postgres")) {
            Some(url) => {
                let url = url.to_owned();
                Raw::Pg(Some(on_thread(move || {
                    postgres::Client::connect(&url, postgres::NoTls).expect("connect")
                })))
            }
            None => Raw::Sqlite(rusqlite::Connection::open(db).expect("open")),
        }
    }

    fn pg(&mut self) -> Option<&mut postgres::Client> {
        match self {
            Raw::Pg(client) => client.as_mut(),
            Raw::Sqlite(_) => None,
        }
    }

    /// Runs statements without parameters; panics on an error.
    pub fn execute_batch(&mut self, sql: &str) {
        if sql.is_empty() {
            return;
        }
        match self {
            Raw::Sqlite(conn) => conn.execute_batch(sql).expect(sql),
            Raw::Pg(_) => {
                let client = self.pg().expect("client");
                on_thread(move || client.batch_execute(sql).expect(sql));
            }
        }
    }

    /// The first column of the first row, an integer.
    pub fn count(&mut self, sql: &str) -> i64 {
        match self {
            Raw::Sqlite(conn) => conn.query_row(sql, [], |r| r.get(0)).expect(sql),
            Raw::Pg(_) => {
                let client = self.pg().expect("client");
                on_thread(move || {
                    let row = client.query_one(sql, &[]).expect(sql);
                    row.try_get::<_, i64>(0)
                        .or_else(|_| row.try_get::<_, i32>(0).map(i64::from))
                        .expect("an integer")
                })
            }
        }
    }

    /// Rows of (text, integer).
    pub fn pairs(&mut self, sql: &str) -> Vec<(String, i64)> {
        match self {
            Raw::Sqlite(conn) => conn
                .prepare(sql)
                .expect(sql)
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect(sql)
                .collect::<rusqlite::Result<_>>()
                .expect(sql),
            Raw::Pg(_) => {
                let client = self.pg().expect("client");
                on_thread(move || {
                    let rows = client.query(sql, &[]).expect(sql);
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
                })
            }
        }
    }

    /// Takes the ledger's write lock from this connection, as another
    /// writer would: SQLite's `BEGIN IMMEDIATE`, or the PostgreSQL service's
    /// advisory write lock inside a transaction.
    pub fn hold_write_lock(&mut self) {
        match self {
            Raw::Sqlite(_) => self.execute_batch("BEGIN IMMEDIATE"),
            Raw::Pg(_) => self.execute_batch("BEGIN; SELECT pg_advisory_xact_lock(1162887513, 1)"),
        }
    }

    pub fn release_write_lock(&mut self) {
        self.execute_batch("ROLLBACK");
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Raw::Pg(client) = self
            && let Some(client) = client.take()
        {
            on_thread(move || drop(client));
        }
    }
}

/// A rule of the schema that refuses mallory's payments (a trigger), in the
/// dialect of the suite's database.
pub fn no_mallory_trigger() -> &'static str {
    match postgres_admin() {
        None => {
            "CREATE TRIGGER no_mallory BEFORE INSERT ON payments WHEN NEW.src = 'mallory'
             BEGIN SELECT RAISE(ABORT, 'mallory may not pay'); END;"
        }
        Some(_) => {
            "CREATE FUNCTION no_mallory() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.src = 'mallory' THEN
                     RAISE EXCEPTION 'mallory may not pay' USING ERRCODE = 'check_violation';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER no_mallory BEFORE INSERT ON payments FOR EACH ROW EXECUTE FUNCTION no_mallory();"
        }
    }
}
