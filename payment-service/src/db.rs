//! The one store interface: a connection that is either embedded SQLite or
//! PostgreSQL, with the small surface every module of the store uses
//! (`store`, `outbox`, `totals`, `batch`, `audit`, the exercise's reads):
//! cached statements with typed parameters and rows, and transaction
//! control. The decisions (keys, leases, balances, figures, events, batches,
//! the audit) are written once over it; only the SQL dialect and the
//! connection handling differ per backend, here and in `schema.rs`.
//!
//! SQL is written once, in SQLite's form with numbered parameters (`?1`);
//! for PostgreSQL it is translated when a statement is first prepared on a
//! connection: `?N` becomes `$N` and SQLite's index hints (`INDEXED BY
//! name`) are dropped (PostgreSQL's planner picks the partial indexes by
//! itself). Statements whose dialects disagree are chosen with
//! [`Connection::dialect`] where they are written.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::balances::Pending;
use crate::db_error::{DbError, DbResult};

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A table definition written for SQLite in this dialect: the tables
    /// shared by both (totals, outbox) use only INTEGER, TEXT and plain
    /// constraints; PostgreSQL's INTEGER is 32 bits, so it becomes BIGINT.
    pub(crate) fn ddl(self, sqlite: &str) -> String {
        match self {
            Dialect::Sqlite => sqlite.to_owned(),
            Dialect::Postgres => sqlite.replace("INTEGER", "BIGINT"),
        }
    }
}

/// A PostgreSQL connection with its statement cache. `postgres::Client`
/// needs `&mut` for every call; a connection is used by one thread at a
/// time (moved between threads, never shared), so a `RefCell` suffices.
pub(crate) struct PgConn {
    client: RefCell<PgClient>,
    /// Set while the writer reruns a batch with a savepoint per request:
    /// then [`Connection::alone`] puts a statement in a savepoint of its own.
    careful: std::cell::Cell<bool>,
    cache: RefCell<HashMap<String, postgres::Statement>>,
}

/// A `postgres::Client` that may be dropped anywhere. Its drop says goodbye
/// to the server through its own runtime's `block_on`, which panics on a
/// thread that drives async tasks (a pool's connections may be dropped
/// with the service, in async code): there the client is dropped on a
/// thread of its own.
pub(crate) struct PgClient(Option<postgres::Client>);

impl PgClient {
    pub(crate) fn new(client: postgres::Client) -> PgClient {
        PgClient(Some(client))
    }
}

impl std::ops::Deref for PgClient {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("a PgClient holds its client until dropped"))
    }
}

impl std::ops::DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        self.0
            .as_mut()
            .unwrap_or_else(|| unreachable!("a PgClient holds its client until dropped"))
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok()
            && let Err(e) = std::thread::Builder::new().spawn(move || drop(client))
        {
            tracing::warn!(error = %e, "cannot close a PostgreSQL connection cleanly");
        }
    }
}

/// Statements kept prepared per PostgreSQL connection; the service has a few
/// dozen distinct statements, so this never evicts in practice.
const PG_STATEMENTS_MAX: usize = 256;

/// One database connection of either engine, and the balances its writer's
/// transaction keeps in memory until its COMMIT (see `balances.rs`).
pub(crate) struct Connection {
    engine: Engine,
    balances: RefCell<Option<Pending>>,
}

enum Engine {
    Sqlite(SqliteConn),
    Pg(Box<PgConn>),
}

impl From<rusqlite::Connection> for Connection {
    fn from(conn: rusqlite::Connection) -> Connection {
        Connection::on(Engine::Sqlite(SqliteConn {
            cache: RefCell::new(Vec::new()),
            conn: Box::new(conn),
        }))
    }
}

/// Statements kept prepared per SQLite connection: the service has a few
/// dozen distinct statements; past this many a new one is not kept.
const SQLITE_STATEMENTS_MAX: usize = 256;

/// A SQLite connection and the statements prepared on it.
///
/// rusqlite's own cache hashes a statement's text twice per use and copies
/// it into a fresh `Arc<str>`: about 1.3k instructions a statement, 4.4k per
/// payment in the writer. Here a statement is found by the address and
/// length of its text (the service's SQL is constants), confirmed by the
/// text itself, among a few dozen.
pub(crate) struct SqliteConn {
    // Declared before `conn`: every statement is finalized before the
    // connection it borrows closes.
    cache: RefCell<Vec<Prepared>>,
    conn: Box<rusqlite::Connection>,
}

// SAFETY: moving the connection moves its statements with it, as
// `rusqlite::Connection` (which is `Send`) moves the raw statements of its own
// cache; SQLite built thread-safe lets a connection and its statements be
// used from any one thread at a time. A statement is reachable only through
// the connection (`SqliteStatement` borrows it and is neither `Send` nor
// `Sync`), so no statement is ever on another thread than its connection.
unsafe impl Send for SqliteConn {}

/// One kept statement; `stmt` is None while it is in use.
struct Prepared {
    sql: String,
    /// The address of the text it was last asked for with.
    at: usize,
    stmt: Option<rusqlite::Statement<'static>>,
}

impl SqliteConn {
    fn prepare(&self, sql: &str) -> DbResult<SqliteStatement<'_>> {
        let at = sql.as_ptr() as usize;
        let mut cache = self.cache.borrow_mut();
        let found = (cache.iter())
            .position(|p| p.at == at && p.sql == sql)
            .or_else(|| cache.iter().position(|p| p.sql == sql));
        let taken = found.and_then(|i| cache[i].stmt.take().map(|stmt| (i, stmt)));
        if let Some((i, stmt)) = taken {
            cache[i].at = at;
            return Ok(SqliteStatement {
                stmt: Some(stmt),
                home: self,
                slot: Some(i),
            });
        }
        let stmt = self.prepare_new(sql)?;
        // In use already (a nested use of the same text), or too many kept:
        // this one is finalized when dropped.
        if found.is_some() || cache.len() >= SQLITE_STATEMENTS_MAX {
            return Ok(SqliteStatement {
                stmt: Some(stmt),
                home: self,
                slot: None,
            });
        }
        cache.push(Prepared {
            sql: sql.to_owned(),
            at,
            stmt: None,
        });
        Ok(SqliteStatement {
            stmt: Some(stmt),
            home: self,
            slot: Some(cache.len() - 1),
        })
    }

    fn prepare_new(&self, sql: &str) -> DbResult<rusqlite::Statement<'static>> {
        // Persistent, as rusqlite's own cache prepares: a long-lived
        // statement in SQLite's per-connection small-allocation pool
        // (lookaside) would leave it empty, and every short allocation would
        // then take the global allocator's mutex.
        let stmt = self
            .conn
            .prepare_with_flags(sql, rusqlite::PrepFlags::SQLITE_PREPARE_PERSISTENT)?;
        // SAFETY: the statement borrows the connection, which lives in a
        // `Box` (its address never changes) owned by `self`. It is only
        // ever reachable through `self`: kept in `self.cache` (dropped
        // before `self.conn`, and emptied before an explicit close) or in a
        // `SqliteStatement` that borrows `self`. So it never outlives the
        // connection, and the 'static is never observed.
        Ok(unsafe { std::mem::transmute::<rusqlite::Statement<'_>, rusqlite::Statement<'static>>(stmt) })
    }
}

/// A statement of a [`SqliteConn`], given back to its cache when dropped
/// with its bindings cleared (rusqlite resets a statement after every
/// execution and query).
pub(crate) struct SqliteStatement<'c> {
    stmt: Option<rusqlite::Statement<'static>>,
    home: &'c SqliteConn,
    slot: Option<usize>,
}

impl Drop for SqliteStatement<'_> {
    fn drop(&mut self) {
        let (Some(slot), Some(mut stmt)) = (self.slot, self.stmt.take()) else {
            return;
        };
        // The bound values freed now, as rusqlite's cache does: an idle
        // statement holds no copy of the last request's text.
        stmt.clear_bindings();
        if let Some(kept) = self.home.cache.borrow_mut().get_mut(slot) {
            kept.stmt = Some(stmt);
        }
    }
}

impl std::ops::Deref for SqliteStatement<'_> {
    type Target = rusqlite::Statement<'static>;
    fn deref(&self) -> &Self::Target {
        self.stmt
            .as_ref()
            .unwrap_or_else(|| unreachable!("a SqliteStatement holds its statement until dropped"))
    }
}

impl std::ops::DerefMut for SqliteStatement<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.stmt
            .as_mut()
            .unwrap_or_else(|| unreachable!("a SqliteStatement holds its statement until dropped"))
    }
}

impl Connection {
    /// A PostgreSQL connection around a connected client.
    pub(crate) fn pg(client: postgres::Client) -> Connection {
        Connection::on(Engine::Pg(Box::new(PgConn {
            client: RefCell::new(PgClient(Some(client))),
            careful: std::cell::Cell::new(false),
            cache: RefCell::new(HashMap::new()),
        })))
    }

    fn on(engine: Engine) -> Connection {
        Connection {
            engine,
            balances: RefCell::new(None),
        }
    }

    /// The balances kept in memory by the writer's open transaction, if any
    /// (only `balances.rs` reads or changes them).
    pub(crate) fn pending_balances(&self) -> &RefCell<Option<Pending>> {
        &self.balances
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match &self.engine {
            Engine::Sqlite(_) => Dialect::Sqlite,
            Engine::Pg(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, change
    /// counts, closing the file before a swap).
    pub(crate) fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(c) => Some(&c.conn),
            Engine::Pg(_) => None,
        }
    }

    /// Closes the connection; SQLite checkpoints its WAL when it closes the
    /// last connection of a file. On failure the connection is given back.
    pub(crate) fn close(self) -> Result<(), Box<(Connection, DbError)>> {
        match self.engine {
            Engine::Sqlite(SqliteConn { cache, conn }) => {
                // Every statement finalized first: SQLite refuses to close a
                // connection with statements left.
                drop(cache);
                conn.close().map_err(|(c, e)| Box::new((Connection::from(c), e.into())))
            }
            // A failed goodbye leaves nothing to undo: the server ends the
            // session (and rolls back anything open) when the socket closes.
            Engine::Pg(pg) => {
                drop(pg);
                Ok(())
            }
        }
    }

    /// A PostgreSQL connection the server or the network closed: it must be
    /// replaced, never pooled again. A SQLite connection never breaks so.
    pub(crate) fn is_broken(&self) -> bool {
        match &self.engine {
            Engine::Sqlite(_) => false,
            Engine::Pg(pg) => pg.client.borrow().is_closed(),
        }
    }

    /// PostgreSQL: whether [`Connection::alone`] uses a savepoint (see there).
    pub(crate) fn set_careful(&self, careful: bool) {
        if let Engine::Pg(pg) = &self.engine {
            pg.careful.set(careful);
        }
    }

    /// Rows changed since the connection opened (SQLite; 0 on PostgreSQL,
    /// where the writer always runs each op in a savepoint instead).
    pub(crate) fn total_changes(&self) -> u64 {
        self.sqlite().map_or(0, rusqlite::Connection::total_changes)
    }

    /// SQLite: no transaction is open (an error rolled it back).
    /// PostgreSQL keeps a failed transaction open until its ROLLBACK.
    pub(crate) fn is_autocommit(&self) -> bool {
        self.sqlite().is_some_and(rusqlite::Connection::is_autocommit)
    }

    /// Does a failed statement spoil the transaction it ran in? SQLite
    /// undoes the statement alone; PostgreSQL aborts the transaction unless
    /// the statement ran inside a savepoint.
    pub(crate) fn errors_abort_transaction(&self) -> bool {
        self.dialect() == Dialect::Postgres
    }

    /// Runs `statement` so that its failure undoes only itself, as every
    /// failed statement does in SQLite: on PostgreSQL inside a savepoint of
    /// its own (a failed statement would abort the whole transaction), when
    /// the writer is careful (its rerun of a batch in which a request
    /// failed). The first run needs none: a failure there reruns the batch.
    pub(crate) fn alone<T>(&self, statement: impl FnOnce(&Connection) -> DbResult<T>) -> DbResult<T> {
        let careful = matches!(&self.engine, Engine::Pg(pg) if pg.careful.get());
        if !careful {
            return statement(self);
        }
        let savepoint = self.savepoint(Savepoint::Statement)?;
        let result = statement(self);
        if result.is_err() {
            savepoint.roll_back()?;
        }
        savepoint.release()?;
        result
    }

    /// Opens a savepoint; rolling back to it also forgets the balance
    /// changes kept in memory since (see `balances.rs`).
    pub(crate) fn savepoint(&self, name: Savepoint) -> DbResult<Marked<'_>> {
        self.prepare_cached(name.sql().0)?.execute(())?;
        Ok(Marked {
            conn: self,
            name,
            balances: crate::balances::mark(self),
        })
    }

    /// A statement, prepared once per connection and kept.
    pub(crate) fn prepare_cached(&self, sql: &str) -> DbResult<Statement<'_>> {
        match &self.engine {
            Engine::Sqlite(c) => Ok(Statement::Sqlite(c.prepare(sql)?)),
            Engine::Pg(pg) => pg.prepare(sql),
        }
    }

    /// A SQLite connection to `path` (tests).
    #[cfg(test)]
    pub(crate) fn open(path: impl AsRef<std::path::Path>) -> DbResult<Connection> {
        Ok(rusqlite::Connection::open(path)?.into())
    }

    /// An in-memory SQLite database (tests).
    #[cfg(test)]
    pub(crate) fn open_in_memory() -> DbResult<Connection> {
        Ok(rusqlite::Connection::open_in_memory()?.into())
    }

    /// A statement prepared for one use (same as cached on PostgreSQL).
    #[cfg(test)]
    pub(crate) fn prepare(&self, sql: &str) -> DbResult<Statement<'_>> {
        self.prepare_cached(sql)
    }

    /// Inserts one row with `sql` (an `INSERT` without `RETURNING`) and
    /// returns its `id`: on SQLite the connection's last rowid, since a
    /// `RETURNING` clause makes SQLite buffer the row in a temporary b-tree
    /// and open a statement journal for every row; on PostgreSQL `RETURNING id`.
    pub(crate) fn insert_returning_id(&self, sql: &str, params: impl Params) -> DbResult<i64> {
        match &self.engine {
            Engine::Sqlite(c) => {
                c.prepare(sql)?.execute(&*params.sqlite())?;
                Ok(c.conn.last_insert_rowid())
            }
            Engine::Pg(_) => Ok(self
                .prepare_cached(&format!("{sql} RETURNING id"))?
                .query_row(params, |r| r.get(0))?),
        }
    }

    /// Runs statements without parameters (schema, transaction control).
    pub(crate) fn execute_batch(&self, sql: &str) -> DbResult<()> {
        match &self.engine {
            Engine::Sqlite(c) => Ok(c.conn.execute_batch(sql)?),
            Engine::Pg(pg) => Ok(pg.client.borrow_mut().batch_execute(&translate(sql))?),
        }
    }

    /// One statement: the rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: impl Params) -> DbResult<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    /// Runs `read` in one read-only snapshot (SQLite: a deferred
    /// transaction; PostgreSQL: REPEATABLE READ), ended before returning.
    pub(crate) fn snapshot<T>(&self, read: impl FnOnce(&Connection) -> DbResult<T>) -> DbResult<T> {
        let begin = match self.dialect() {
            Dialect::Sqlite => "BEGIN",
            Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        };
        self.prepare_cached(begin)?.execute(())?;
        let result = read(self);
        let end = self.prepare_cached("ROLLBACK")?.execute(());
        let value = result?;
        end?;
        Ok(value)
    }

    /// The first row of one statement, mapped by `f`.
    pub(crate) fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> DbResult<T>,
    ) -> Result<T, QueryError> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// The savepoints the service uses, by name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Savepoint {
    /// One request of a batch the writer runs again carefully.
    Op,
    /// All items of a batch request.
    Batch,
    /// One statement (PostgreSQL, see [`Connection::alone`]).
    Statement,
}

impl Savepoint {
    /// Its `SAVEPOINT`, `ROLLBACK TO` and `RELEASE`.
    fn sql(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Savepoint::Op => ("SAVEPOINT op", "ROLLBACK TO op", "RELEASE op"),
            Savepoint::Batch => ("SAVEPOINT batch", "ROLLBACK TO batch", "RELEASE batch"),
            Savepoint::Statement => ("SAVEPOINT statement", "ROLLBACK TO statement", "RELEASE statement"),
        }
    }
}

/// An open savepoint and the in-memory balances as they were at it.
pub(crate) struct Marked<'c> {
    conn: &'c Connection,
    name: Savepoint,
    balances: Option<Pending>,
}

impl Marked<'_> {
    /// Undoes everything since the savepoint, balances kept in memory
    /// included; the savepoint stays open until [`Marked::release`].
    pub(crate) fn roll_back(&self) -> DbResult<()> {
        self.conn.prepare_cached(self.name.sql().1)?.execute(())?;
        crate::balances::restore(self.conn, self.balances.clone());
        Ok(())
    }

    pub(crate) fn release(self) -> DbResult<()> {
        self.conn.prepare_cached(self.name.sql().2)?.execute(())?;
        Ok(())
    }
}

/// Is `sql` transaction control, which PostgreSQL runs as a simple query?
fn is_transaction_control(sql: &str) -> bool {
    let word = sql.split_whitespace().next().unwrap_or("");
    ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

impl PgConn {
    fn prepare(&self, sql: &str) -> DbResult<Statement<'_>> {
        if is_transaction_control(sql) {
            return Ok(Statement::PgSimple {
                conn: self,
                sql: translate(sql),
            });
        }
        if let Some(stmt) = self.cache.borrow().get(sql) {
            return Ok(Statement::Pg {
                conn: self,
                stmt: stmt.clone(),
            });
        }
        let stmt = self.client.borrow_mut().prepare(&translate(sql))?;
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= PG_STATEMENTS_MAX {
            cache.clear();
        }
        cache.insert(sql.to_owned(), stmt.clone());
        Ok(Statement::Pg { conn: self, stmt })
    }
}

/// SQLite's text to PostgreSQL's: `?N` to `$N`, `INDEXED BY name` dropped.
/// String literals are copied untouched.
pub(crate) fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_string = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                in_string = !in_string;
                out.push(c);
            }
            '?' if !in_string => out.push('$'),
            _ => out.push(c),
        }
    }
    drop_index_hints(&out)
}

fn drop_index_hints(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("INDEXED BY ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "INDEXED BY ".len()..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

/// A prepared statement of either engine.
pub(crate) enum Statement<'c> {
    Sqlite(SqliteStatement<'c>),
    Pg {
        conn: &'c PgConn,
        stmt: postgres::Statement,
    },
    PgSimple {
        conn: &'c PgConn,
        sql: String,
    },
}

/// A query that found no row, or failed.
#[derive(Debug)]
pub(crate) enum QueryError {
    NoRow,
    Db(DbError),
}

impl From<DbError> for QueryError {
    fn from(e: DbError) -> QueryError {
        QueryError::Db(e)
    }
}

impl From<QueryError> for DbError {
    fn from(e: QueryError) -> DbError {
        match e {
            QueryError::NoRow => DbError::Other("the query returned no row".into()),
            QueryError::Db(e) => e,
        }
    }
}

/// `rusqlite`'s `.optional()`: no row is None.
pub(crate) trait OptionalExtension<T> {
    fn optional(self) -> DbResult<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T, QueryError> {
    fn optional(self) -> DbResult<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(QueryError::NoRow) => Ok(None),
            Err(QueryError::Db(e)) => Err(e),
        }
    }
}

impl Statement<'_> {
    pub(crate) fn execute(&mut self, params: impl Params) -> DbResult<usize> {
        match self {
            Statement::Sqlite(s) => Ok(s.execute(&*params.sqlite())?),
            Statement::Pg { conn, stmt } => {
                let n = conn.client.borrow_mut().execute(&*stmt, &params.pg())?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
            Statement::PgSimple { conn, sql } => Ok(conn.client.borrow_mut().batch_execute(sql).map(|()| 0)?),
        }
    }

    /// The first row, mapped by `f`; `QueryError::NoRow` when there is none.
    pub(crate) fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> DbResult<T>,
    ) -> Result<T, QueryError> {
        match self {
            Statement::Sqlite(s) => {
                let mut rows = s.query(&*params.sqlite()).map_err(DbError::from)?;
                match rows.next().map_err(DbError::from)? {
                    Some(r) => Ok(f(&Row::Sqlite(r))?),
                    None => Err(QueryError::NoRow),
                }
            }
            Statement::Pg { conn, stmt } => {
                let row = conn
                    .client
                    .borrow_mut()
                    .query_opt(&*stmt, &params.pg())
                    .map_err(DbError::from)?;
                match row {
                    Some(r) => Ok(f(&Row::Pg(&r))?),
                    None => Err(QueryError::NoRow),
                }
            }
            Statement::PgSimple { .. } => Err(QueryError::NoRow),
        }
    }

    /// Every row, each mapped by `f` in order; the first error stops.
    pub(crate) fn query_map<T>(
        &mut self,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        let mut out = Vec::new();
        match self {
            Statement::Sqlite(s) => {
                let mut rows = s.query(&*params.sqlite())?;
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r))?);
                }
            }
            Statement::Pg { conn, stmt } => {
                // Streamed, as SQLite's rows are: an audit's pass over every
                // account holds one row at a time, not the whole table.
                use postgres::fallible_iterator::FallibleIterator;
                let mut client = conn.client.borrow_mut();
                let mut rows = client.query_raw(&*stmt, params.pg())?;
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Pg(&r))?);
                }
            }
            Statement::PgSimple { .. } => {}
        }
        Ok(out)
    }
}

/// A value both engines accept as a parameter.
pub(crate) trait Param: rusqlite::ToSql + postgres::types::ToSql + Sync {}

impl<T: rusqlite::ToSql + postgres::types::ToSql + Sync + ?Sized> Param for T {}

/// A statement's parameters, in order (`?1`, `?2`, ...).
pub(crate) trait Params {
    fn sqlite(&self) -> Vec<&dyn rusqlite::ToSql>;
    fn pg(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)>;
}

impl Params for () {
    fn sqlite(&self) -> Vec<&dyn rusqlite::ToSql> {
        Vec::new()
    }
    fn pg(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        Vec::new()
    }
}

impl Params for &[&dyn Param] {
    fn sqlite(&self) -> Vec<&dyn rusqlite::ToSql> {
        self.iter().map(|p| *p as &dyn rusqlite::ToSql).collect()
    }
    fn pg(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        self.iter()
            .map(|p| *p as &(dyn postgres::types::ToSql + Sync))
            .collect()
    }
}

impl<T: Param, const N: usize> Params for [T; N] {
    fn sqlite(&self) -> Vec<&dyn rusqlite::ToSql> {
        self.iter().map(|p| p as &dyn rusqlite::ToSql).collect()
    }
    fn pg(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        self.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect()
    }
}

/// `rusqlite::params!` for both engines.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$(&$p as &dyn $crate::db::Param),*][..]
    };
}
pub(crate) use params;

/// A row of either engine.
pub(crate) enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Pg(&'a postgres::Row),
}

/// A column index (`usize` only, so a literal `0` needs no suffix).
pub(crate) trait RowIndex {
    fn index(self) -> usize;
}

impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

impl Row<'_> {
    pub(crate) fn get<I: RowIndex, T: FromColumn>(&self, i: I) -> DbResult<T> {
        let i = i.index();
        match self {
            Row::Sqlite(r) => T::from_sqlite(r, i).map_err(DbError::from),
            Row::Pg(r) => T::from_pg(r, i),
        }
    }
}

/// A Rust value read from a column of either engine.
pub(crate) trait FromColumn: Sized {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self>;
    fn from_pg(row: &postgres::Row, i: usize) -> DbResult<Self>;
}

/// An integer column of PostgreSQL, whatever its width (`count(*)` is
/// BIGINT, a literal INTEGER, a comparison BOOLEAN).
fn pg_int(row: &postgres::Row, i: usize) -> DbResult<Option<i64>> {
    use postgres::types::Type;
    let ty = row.columns().get(i).map(|c| c.type_().clone());
    Ok(match ty {
        Some(Type::INT8) => row.try_get::<_, Option<i64>>(i)?,
        Some(Type::INT4) => row.try_get::<_, Option<i32>>(i)?.map(i64::from),
        Some(Type::INT2) => row.try_get::<_, Option<i16>>(i)?.map(i64::from),
        Some(Type::BOOL) => row.try_get::<_, Option<bool>>(i)?.map(i64::from),
        other => return Err(DbError::Other(format!("column {i} is {other:?}, not an integer"))),
    })
}

impl FromColumn for Option<i64> {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> DbResult<Self> {
        pg_int(row, i)
    }
}

impl FromColumn for i64 {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> DbResult<Self> {
        pg_int(row, i)?.ok_or_else(|| DbError::Other(format!("column {i} is NULL")))
    }
}

impl FromColumn for Option<u16> {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> DbResult<Self> {
        pg_int(row, i)?
            .map(|v| u16::try_from(v).map_err(|_| DbError::Overflow(format!("column {i}: {v} is not a u16"))))
            .transpose()
    }
}

impl FromColumn for u16 {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> DbResult<Self> {
        Option::<u16>::from_pg(row, i)?.ok_or_else(|| DbError::Other(format!("column {i} is NULL")))
    }
}

impl FromColumn for bool {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> DbResult<Self> {
        Ok(i64::from_pg(row, i)? != 0)
    }
}

impl FromColumn for Option<String> {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> DbResult<Self> {
        Ok(row.try_get(i)?)
    }
}

impl FromColumn for String {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> DbResult<Self> {
        Ok(row.try_get(i)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_parameters_and_drops_index_hints_but_not_inside_strings() {
        assert_eq!(
            translate("SELECT a FROM t INDEXED BY t_by_a WHERE a = ?1 AND b = '?2' AND c = ?10"),
            "SELECT a FROM t  WHERE a = $1 AND b = '?2' AND c = $10"
        );
        assert!(is_transaction_control("  SAVEPOINT op"));
        assert!(!is_transaction_control("SELECT 1"));
    }

    fn kept(conn: &Connection) -> Vec<(String, bool)> {
        let Engine::Sqlite(c) = &conn.engine else {
            unreachable!("a SQLite connection")
        };
        c.cache
            .borrow()
            .iter()
            .map(|p| (p.sql.clone(), p.stmt.is_some()))
            .collect()
    }

    const TWICE: &str = "SELECT ?1 * 2";

    #[test]
    fn a_statement_is_prepared_once_and_found_by_its_text_wherever_it_lives() {
        let conn = Connection::open_in_memory().expect("open");
        let twice = |sql: &str, n: i64| -> i64 { conn.query_row(sql, [n], |r| r.get(0)).expect("query") };
        assert_eq!(twice(TWICE, 2), 4);
        assert_eq!(twice(TWICE, 3), 6);
        assert_eq!(twice(&format!("SELECT ?1 * {}", 2), 5), 10, "the same text elsewhere");
        assert_eq!(kept(&conn), [(TWICE.to_owned(), true)]);
        // Used twice at once: the second is a statement of its own, not kept.
        let mut outer = conn.prepare_cached(TWICE).expect("outer");
        let inner: i64 = conn.query_row(TWICE, [7], |r| r.get(0)).expect("inner");
        assert_eq!(
            (outer.query_row([1], |r| r.get::<_, i64>(0)).expect("outer"), inner),
            (2, 14)
        );
        assert_eq!(kept(&conn), [(TWICE.to_owned(), false)], "the outer one is in use");
        drop(outer);
        assert_eq!(kept(&conn), [(TWICE.to_owned(), true)]);
        // A statement SQLite refuses is neither kept nor half-kept.
        assert!(conn.prepare_cached("SELECT FROM nowhere").is_err());
        assert_eq!(kept(&conn).len(), 1);
    }

    #[test]
    fn closing_finalizes_the_kept_statements_first() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = Connection::open(dir.path().join("c.db")).expect("open");
        conn.execute_batch("CREATE TABLE t (a INTEGER)").expect("schema");
        conn.execute("INSERT INTO t VALUES (?1)", [1]).expect("insert");
        assert_eq!(kept(&conn).len(), 1);
        assert!(
            conn.close().is_ok(),
            "SQLite closes a connection only once its statements are finalized"
        );
    }
}
