//! `kind = "sql"`: one named statement, written by the operator, run with the stored
//! connection string. Arguments are only ever bound as parameters, never put in the text.
//!
//! Read-only (the default) means, on PostgreSQL, a `READ ONLY` transaction that is always
//! rolled back; on MySQL and MariaDB, a session whose transactions are all `READ ONLY` (so
//! DDL, which commits implicitly, is refused too), rolled back; on SQLite, a connection
//! opened read-only (`SQLITE_OPEN_READONLY`) and a transaction that is always rolled back. A
//! read-write capability commits. Either way at most `max_rows` rows come back, no more
//! than fit in `max_response_bytes`, and the answer says when it was cut (a read-only
//! statement is stopped after one more row, its connection closed rather than the rest
//! read; a read-write one runs to its end to commit). The statement is stopped at `timeout`
//! (PostgreSQL `statement_timeout`; MariaDB `max_statement_time`, MySQL
//! `max_execution_time`, which covers `SELECT` only; SQLite through its progress handler),
//! and abandoned by the broker then in any case.

use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::mysql::{
    MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlQueryResult, MySqlRow,
    MySqlSslMode,
};
use sqlx::postgres::{PgConnectOptions, PgQueryResult, PgRow, PgSslMode};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteConnectOptions, SqliteError, SqliteQueryResult, SqliteRow};
use sqlx::{
    AssertSqlSafe, Column, ConnectOptions, Connection, Database, Either, Encode, Executor,
    IntoArguments, Row, Type, TypeInfo, ValueRef,
};
use time::format_description::well_known::Rfc3339;

use super::params::{self, Param, ParamType};
use super::{DEFAULT_MAX_RESPONSE, RunError};
use crate::keyring::check_url_passwords;
use crate::providers::is_loopback;

/// Longest a statement may run when the capability sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows returned at most when `max_rows` is not set.
const DEFAULT_MAX_ROWS: usize = 100;
/// The most `max_rows` may be: answers go to a model, not to a bulk export.
const MAX_ROWS_LIMIT: usize = 10_000;
/// Room the answer's fields other than rows take, counted against `max_response_bytes`.
const ANSWER_FIELDS: usize = 128;
/// SQLite virtual-machine steps between deadline checks.
const SQLITE_STEPS_PER_CHECK: i32 = 1000;
/// PostgreSQL's SQLSTATE for a write in a read-only transaction.
const PG_READ_ONLY: &str = "25006";
/// PostgreSQL's SQLSTATE for a statement cancelled (by `statement_timeout`).
const PG_CANCELED: &str = "57014";
/// PostgreSQL's SQLSTATE class of data exceptions (MySQL and MariaDB use it too, for some):
/// a value malformed for its type, out of range, too long, with a NUL byte.
const DATA_EXCEPTION_CLASS: &str = "22";
/// MySQL's and MariaDB's errors for a value that can't be used as given, whatever SQLSTATE
/// they carry: out of range (1264), truncated (1265), incorrect for its type (1292, 1366,
/// 1411), a division by zero (1365), too long (1406).
const MYSQL_BAD_VALUE: [u16; 7] = [1264, 1265, 1292, 1365, 1366, 1406, 1411];
/// SQLite's primary result codes (the low byte of its extended codes).
const SQLITE_READONLY: i64 = 8;
const SQLITE_INTERRUPT: i64 = 9;
/// MySQL's and MariaDB's error numbers: a write in a read-only transaction, a statement past
/// MariaDB's `max_statement_time` or MySQL's `max_execution_time`, and a server variable
/// this server doesn't have.
const MYSQL_READ_ONLY: u16 = 1792;
const MARIADB_STATEMENT_TIMEOUT: u16 = 1969;
const MYSQL_QUERY_TIMEOUT: u16 = 3024;
const MYSQL_UNKNOWN_VARIABLE: u16 = 1193;

/// An SQL capability as written in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    /// What it does, for the model.
    pub description: String,
    /// The stored connection string (`seks secret add NAME --provider sql`):
    /// `postgres://…`, `mysql://…` or `sqlite:///path/to.db`.
    pub secret: String,
    /// Hold every call until an operator approves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_approval: bool,
    /// Longest the statement may run (default 10s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<Duration>,
    /// The statement, with placeholders (`$1`, `$2`… or `?`) bound to `params` in order.
    pub statement: String,
    /// The arguments, in placeholder order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Run read-only and roll back (default true).
    #[serde(default = "read_only_default")]
    pub read_only: bool,
    /// Most rows returned (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<usize>,
    /// Largest answer, in bytes of JSON (default 1 MiB): rows past it are cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<usize>,
    /// Most calls running at once, whichever tokens make them (default 4): each opens its own
    /// connection, and the database has only so many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<NonZeroU32>,
}

fn read_only_default() -> bool {
    true
}

/// The databases a connection string can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
}

impl Dialect {
    /// The database `url` is for, by its scheme.
    fn of(url: &str) -> Result<Dialect, &'static str> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else if url.starts_with("mysql://") {
            Ok(Dialect::Mysql)
        } else if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else {
            Err("the connection string is none of postgres://, mysql:// and sqlite:")
        }
    }
}

/// Check a connection string before it is stored: a database seks speaks, in a form its
/// driver reads, reached so that the password can't be read on the way. Errors never quote
/// it.
pub fn check_connection_string(url: &str) -> Result<(), String> {
    match Dialect::of(url)? {
        Dialect::Postgres => pg_options(url).map(drop),
        Dialect::Mysql => mysql_options(url).map(drop),
        Dialect::Sqlite => SqliteConnectOptions::from_str(url)
            .map(drop)
            .map_err(|_| UNREADABLE.to_owned()),
    }
}

const UNREADABLE: &str = "the connection string can't be read (check its form and percent-encode `@`, `:` and `/` in the user and password)";

/// A PostgreSQL connection string's options, if TLS is required or the server is local.
fn pg_options(url: &str) -> Result<PgConnectOptions, String> {
    let options = PgConnectOptions::from_str(url).map_err(|_| UNREADABLE.to_owned())?;
    check_url_passwords(url)?;
    let tls = matches!(
        options.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    );
    let socket = options.get_socket().is_some();
    tls_or_local(
        tls,
        socket,
        options.get_host(),
        "`sslmode=verify-full`, or `require`",
    )?;
    Ok(options)
}

/// A MySQL connection string's options, if TLS is required or the server is local.
fn mysql_options(url: &str) -> Result<MySqlConnectOptions, String> {
    let options = MySqlConnectOptions::from_str(url).map_err(|_| UNREADABLE.to_owned())?;
    check_url_passwords(url)?;
    let tls = matches!(
        options.get_ssl_mode(),
        MySqlSslMode::Required | MySqlSslMode::VerifyCa | MySqlSslMode::VerifyIdentity
    );
    let socket = options.get_socket().is_some();
    tls_or_local(
        tls,
        socket,
        options.get_host(),
        "`ssl-mode=VERIFY_IDENTITY`, or `REQUIRED`",
    )?;
    Ok(options)
}

/// Refuse a database off this machine unless TLS is required (`option` says how).
fn tls_or_local(tls: bool, socket: bool, host: &str, option: &str) -> Result<(), String> {
    if tls || socket || is_loopback(host) {
        Ok(())
    } else {
        Err(format!("{CLEAR_TEXT} ({option})"))
    }
}

/// Drivers fall back to clear text by default, and some servers ask for the password in it.
const CLEAR_TEXT: &str = "a database that is not on a loopback address or a Unix socket must be reached over TLS: the connection string has to require it";

/// Rows read from a statement, as JSON.
struct Fetched {
    /// Column names, from the first row.
    columns: Vec<String>,
    /// One object per row.
    rows: Vec<Value>,
    /// More rows were there than `max_rows`, or than fit in `max_response_bytes`.
    truncated: bool,
    /// Reported when the statement ran to its end.
    affected: Option<u64>,
}

impl SqlSpec {
    fn max_rows(&self) -> usize {
        self.max_rows.unwrap_or(DEFAULT_MAX_ROWS)
    }

    /// Check the definition.
    pub fn check(&self) -> Result<(), String> {
        if self.statement.trim().is_empty() {
            return Err("`statement` is empty".to_owned());
        }
        if !(1..=MAX_ROWS_LIMIT).contains(&self.max_rows()) {
            return Err(format!("`max_rows` must be 1 to {MAX_ROWS_LIMIT}"));
        }
        params::check(&self.params)
    }

    /// Run the statement with `values` (one per parameter) on the database `url` names.
    pub async fn run(
        &self,
        url: &SecretString,
        values: &[Value],
        timeout: Duration,
    ) -> Result<Value, RunError> {
        let url = url.expose_secret();
        let deadline = Instant::now() + timeout;
        let dialect = Dialect::of(url).map_err(|why| RunError::Misconfigured(why.to_owned()))?;
        let ran = match dialect {
            Dialect::Postgres => {
                tokio::time::timeout(timeout, self.postgres(url, values, timeout)).await
            }
            Dialect::Mysql => tokio::time::timeout(timeout, self.mysql(url, values, timeout)).await,
            Dialect::Sqlite => {
                tokio::time::timeout(timeout, self.sqlite(url, values, deadline)).await
            }
        };
        ran.map_err(|_| RunError::Timeout(timeout))?
            .map_err(|e| self.error(e, timeout))
    }

    async fn postgres(
        &self,
        url: &str,
        values: &[Value],
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let options = pg_options(url).map_err(Failure::Config)?;
        let mut conn = options.connect().await.map_err(Failure::Connect)?;
        let mut tx = conn.begin().await?;
        if self.read_only {
            tx.execute("SET TRANSACTION READ ONLY").await?;
        }
        let millis = timeout.as_millis().max(1);
        tx.execute(AssertSqlSafe(format!(
            "SET LOCAL statement_timeout = {millis}"
        )))
        .await?;
        let answer = self
            .run_in(tx, values, PgQueryResult::rows_affected, pg_value)
            .await?;
        conn.close().await.ok();
        Ok(answer)
    }

    async fn mysql(
        &self,
        url: &str,
        values: &[Value],
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let options = mysql_options(url).map_err(Failure::Config)?;
        let mut conn = options.connect().await.map_err(Failure::Connect)?;
        if self.read_only {
            // For the session, not just one transaction: a DDL statement commits the
            // transaction it is in and would run outside it.
            conn.execute("SET SESSION TRANSACTION READ ONLY").await?;
        }
        mysql_statement_timeout(&mut conn, timeout).await?;
        let tx = conn.begin().await?;
        let answer = self
            .run_in(tx, values, MySqlQueryResult::rows_affected, mysql_value)
            .await?;
        conn.close().await.ok();
        Ok(answer)
    }

    async fn sqlite(
        &self,
        url: &str,
        values: &[Value],
        deadline: Instant,
    ) -> Result<Value, Failure> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| {
                Failure::Config("the stored connection string is not an SQLite URL".to_owned())
            })?
            .read_only(self.read_only)
            .busy_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut conn = options.connect().await.map_err(Failure::Connect)?;
        // SQLite runs in the caller's thread and can't be cancelled by dropping the future:
        // it checks the deadline itself, and stops (SQLITE_INTERRUPT) once it has passed.
        conn.lock_handle()
            .await?
            .set_progress_handler(SQLITE_STEPS_PER_CHECK, move || Instant::now() < deadline);
        let tx = conn.begin().await?;
        let answer = self
            .run_in(tx, values, SqliteQueryResult::rows_affected, sqlite_value)
            .await?;
        conn.close().await.ok();
        Ok(answer)
    }

    /// The statement with every value bound as a typed parameter (a null for an absent
    /// optional one), in declaration order.
    fn bound<'q, DB: Database>(&self, values: &[Value]) -> Query<'q, DB, DB::Arguments>
    where
        for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<f64>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<bool>: Encode<'t, DB> + Type<DB>,
    {
        // The statement is the operator's text from the definition; nothing the agent sends
        // is ever part of it.
        let mut query = sqlx::query(AssertSqlSafe(self.statement.clone()));
        for (p, v) in self.params.iter().zip(values) {
            query = match p.kind {
                ParamType::Integer => query.bind(v.as_i64()),
                ParamType::Number => query.bind(v.as_f64()),
                ParamType::String => query.bind(v.as_str().map(str::to_owned)),
                ParamType::Boolean => query.bind(v.as_bool()),
            };
        }
        query
    }

    /// Run the statement with `values` in `tx` and end it; the answer, its rows rendered by
    /// `value`.
    async fn run_in<DB: Database>(
        &self,
        mut tx: sqlx::Transaction<'_, DB>,
        values: &[Value],
        rows_affected: fn(&DB::QueryResult) -> u64,
        value: fn(&DB::Row, usize) -> Result<Value, String>,
    ) -> Result<Value, Failure>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        DB::Arguments: IntoArguments<DB>,
        for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<f64>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<bool>: Encode<'t, DB> + Type<DB>,
    {
        let limits = Limits {
            rows: self.max_rows(),
            bytes: self.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE),
        };
        let fetched = fetch(self.bound(values), &mut *tx, limits, rows_affected, value).await?;
        if fetched.truncated && self.read_only {
            // Ending the transaction would first read the rest of the result, however
            // large: the caller closes the connection instead, which rolls it back.
            drop(tx);
        } else {
            self.end(tx).await?;
        }
        Ok(self.answer(fetched))
    }

    /// End a call's transaction: a read-only call keeps nothing, whatever it ran.
    async fn end<DB: Database>(&self, tx: sqlx::Transaction<'_, DB>) -> Result<(), sqlx::Error> {
        if self.read_only {
            tx.rollback().await
        } else {
            tx.commit().await
        }
    }

    fn answer(&self, fetched: Fetched) -> Value {
        let mut answer = json!({
            "columns": fetched.columns,
            "row_count": fetched.rows.len(),
            "rows": fetched.rows,
            "truncated": fetched.truncated,
        });
        if !self.read_only
            && let Some(n) = fetched.affected
        {
            answer["rows_affected"] = n.into();
        }
        answer
    }

    fn error(&self, failure: Failure, timeout: Duration) -> RunError {
        match failure {
            Failure::Config(why) => RunError::Misconfigured(why),
            Failure::RowTooLarge(limit) => RunError::Refused(format!(
                "a row of the answer is larger than the {limit} bytes it may have \
                 (`max_response_bytes`)"
            )),
            // The server refused the login: the stored connection string is wrong.
            Failure::Connect(sqlx::Error::Database(e)) => RunError::Misconfigured(format!(
                "the database refused the connection: {}",
                e.message()
            )),
            Failure::Connect(e) => {
                tracing::warn!(error = %e, "could not connect to a capability's database");
                RunError::Unreachable("the database could not be reached".to_owned())
            }
            Failure::Db(sqlx::Error::Database(e)) => {
                let code = e.code().map(|c| c.into_owned()).unwrap_or_default();
                let sqlite_code = code.parse::<i64>().ok().map(|c| c & 0xff);
                let mysql_number = e
                    .try_downcast_ref::<MySqlDatabaseError>()
                    .map(MySqlDatabaseError::number);
                // SQLite's codes are numbers: some would look like an SQLSTATE class.
                let is_sqlite = e.try_downcast_ref::<SqliteError>().is_some();
                if code == PG_READ_ONLY
                    || sqlite_code == Some(SQLITE_READONLY)
                    || mysql_number == Some(MYSQL_READ_ONLY)
                {
                    RunError::ReadOnly
                } else if code == PG_CANCELED
                    || sqlite_code == Some(SQLITE_INTERRUPT)
                    || mysql_number
                        .is_some_and(|n| n == MARIADB_STATEMENT_TIMEOUT || n == MYSQL_QUERY_TIMEOUT)
                {
                    RunError::Timeout(timeout)
                } else if (code.starts_with(DATA_EXCEPTION_CLASS) && !is_sqlite)
                    || mysql_number.is_some_and(|n| MYSQL_BAD_VALUE.contains(&n))
                {
                    RunError::BadValue(format!(
                        "the database could not use a value given ({code}): {}",
                        e.message()
                    ))
                } else {
                    RunError::Refused(format!(
                        "the database refused the statement ({code}): {}",
                        e.message()
                    ))
                }
            }
            Failure::Db(e) => {
                tracing::warn!(error = %e, "a capability's statement failed");
                RunError::Unreachable("the database connection failed".to_owned())
            }
        }
    }
}

/// Why a statement didn't run, before it is told to the agent.
enum Failure {
    /// The connection string is unusable.
    Config(String),
    /// Connecting failed (its text may name hosts: logged, not shown).
    Connect(sqlx::Error),
    /// The database or the connection failed while running.
    Db(sqlx::Error),
    /// Even the first row is larger than the answer may be (its limit).
    RowTooLarge(usize),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Db(e)
    }
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure::Config(why)
    }
}

/// How much of a result an answer keeps.
struct Limits {
    /// Rows, at most.
    rows: usize,
    /// Of the answer as JSON.
    bytes: usize,
}

/// Run `query`, keeping the rows (rendered by `value`) that fit in `limits`, and reading one
/// more to know whether there were more. Each row is rendered as it arrives, so at most one
/// is held as the database sent it.
async fn fetch<'c, DB: Database>(
    query: Query<'c, DB, DB::Arguments>,
    executor: impl Executor<'c, Database = DB>,
    limits: Limits,
    rows_affected: fn(&DB::QueryResult) -> u64,
    value: fn(&DB::Row, usize) -> Result<Value, String>,
) -> Result<Fetched, Failure>
where
    DB::Arguments: IntoArguments<DB>,
{
    let mut stream = executor.fetch_many(query);
    let mut fetched = Fetched {
        columns: Vec::new(),
        rows: Vec::new(),
        truncated: false,
        affected: None,
    };
    let mut size = ANSWER_FIELDS;
    while let Some(item) = stream.try_next().await? {
        let row = match item {
            Either::Left(done) => {
                fetched.affected = Some(fetched.affected.unwrap_or(0) + rows_affected(&done));
                continue;
            }
            Either::Right(row) => row,
        };
        if fetched.rows.len() == limits.rows {
            return Ok(cut(fetched));
        }
        if fetched.columns.is_empty() {
            fetched.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
            size += serde_json::to_vec(&fetched.columns).map_or(0, |json| json.len());
        }
        let mut object = Map::new();
        for (i, name) in fetched.columns.iter().enumerate() {
            object.insert(name.clone(), value(&row, i)?);
        }
        let object = Value::Object(object);
        // Its JSON, and the comma before the next.
        size += object.to_string().len() + 1;
        if size > limits.bytes {
            if fetched.rows.is_empty() {
                return Err(Failure::RowTooLarge(limits.bytes));
            }
            return Ok(cut(fetched));
        }
        fetched.rows.push(object);
    }
    Ok(fetched)
}

/// `fetched`, marked as cut short: the statement did not run to its end.
fn cut(fetched: Fetched) -> Fetched {
    Fetched {
        truncated: true,
        affected: None,
        ..fetched
    }
}

/// Column `i`'s name and the type of its value in `row`; `None` for a NULL.
fn name_and_type<R: Row>(row: &R, i: usize) -> Result<Option<(String, String)>, String>
where
    usize: sqlx::ColumnIndex<R>,
{
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(None);
    }
    let ty = raw.type_info().name().to_owned();
    Ok(Some((row.columns()[i].name().to_owned(), ty)))
}

/// A time without a zone, in RFC 3339 less the offset.
fn local_time(t: time::PrimitiveDateTime) -> Result<Value, String> {
    let text = t.assume_utc().format(&Rfc3339).map_err(|e| e.to_string())?;
    Ok(json!(text.trim_end_matches('Z')))
}

fn unconvertible(column: &str, ty: &str) -> String {
    format!(
        "column `{column}` has type {ty}, which a capability can't return; cast it to text in \
         the statement"
    )
}

/// Have the server stop a statement at `timeout`: MariaDB's `max_statement_time` covers
/// every statement, MySQL's `max_execution_time` only `SELECT`.
async fn mysql_statement_timeout(
    conn: &mut MySqlConnection,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    let mariadb = format!(
        "SET SESSION max_statement_time = {:.3}",
        timeout.as_secs_f64().max(0.001)
    );
    match conn.execute(AssertSqlSafe(mariadb)).await {
        Err(sqlx::Error::Database(e))
            if e.try_downcast_ref::<MySqlDatabaseError>()
                .is_some_and(|e| e.number() == MYSQL_UNKNOWN_VARIABLE) =>
        {
            let millis = timeout.as_millis().max(1);
            conn.execute(AssertSqlSafe(format!(
                "SET SESSION max_execution_time = {millis}"
            )))
            .await?;
            Ok(())
        }
        set => set.map(drop),
    }
}

/// One PostgreSQL value as JSON: numbers as numbers (NUMERIC as an exact string), text as
/// text, times in RFC 3339, bytes in base64.
fn pg_value(row: &PgRow, i: usize) -> Result<Value, String> {
    let Some((name, ty)) = name_and_type(row, i)? else {
        return Ok(Value::Null);
    };
    let get_err = |e: sqlx::Error| format!("column `{name}`: {e}");
    Ok(match ty.as_str() {
        "BOOL" => json!(row.try_get_unchecked::<bool, _>(i).map_err(get_err)?),
        "INT2" => json!(row.try_get_unchecked::<i16, _>(i).map_err(get_err)?),
        "INT4" => json!(row.try_get_unchecked::<i32, _>(i).map_err(get_err)?),
        "INT8" => json!(row.try_get_unchecked::<i64, _>(i).map_err(get_err)?),
        "FLOAT4" => json!(row.try_get_unchecked::<f32, _>(i).map_err(get_err)?),
        "FLOAT8" => json!(row.try_get_unchecked::<f64, _>(i).map_err(get_err)?),
        "NUMERIC" => json!(
            row.try_get_unchecked::<sqlx::types::Decimal, _>(i)
                .map_err(get_err)?
                .to_string()
        ),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => {
            json!(row.try_get_unchecked::<String, _>(i).map_err(get_err)?)
        }
        "JSON" | "JSONB" => row
            .try_get_unchecked::<sqlx::types::JsonValue, _>(i)
            .map_err(get_err)?,
        "UUID" => json!(
            row.try_get_unchecked::<sqlx::types::Uuid, _>(i)
                .map_err(get_err)?
                .to_string()
        ),
        "TIMESTAMPTZ" => json!(
            row.try_get_unchecked::<time::OffsetDateTime, _>(i)
                .map_err(get_err)?
                .format(&Rfc3339)
                .map_err(|e| e.to_string())?
        ),
        "TIMESTAMP" => local_time(row.try_get_unchecked(i).map_err(get_err)?)?,
        "DATE" => json!(
            row.try_get_unchecked::<time::Date, _>(i)
                .map_err(get_err)?
                .to_string()
        ),
        "BYTEA" => json!(BASE64.encode(row.try_get_unchecked::<Vec<u8>, _>(i).map_err(get_err)?)),
        other => return Err(unconvertible(&name, other)),
    })
}

/// One MySQL or MariaDB value as JSON, as [`pg_value`] renders PostgreSQL's.
fn mysql_value(row: &MySqlRow, i: usize) -> Result<Value, String> {
    let Some((name, ty)) = name_and_type(row, i)? else {
        return Ok(Value::Null);
    };
    let get_err = |e: sqlx::Error| format!("column `{name}`: {e}");
    Ok(match ty.as_str() {
        "BOOLEAN" => json!(row.try_get_unchecked::<bool, _>(i).map_err(get_err)?),
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => {
            json!(row.try_get_unchecked::<i64, _>(i).map_err(get_err)?)
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
        | "BIGINT UNSIGNED" | "YEAR" => {
            json!(row.try_get_unchecked::<u64, _>(i).map_err(get_err)?)
        }
        "FLOAT" => json!(row.try_get_unchecked::<f32, _>(i).map_err(get_err)?),
        "DOUBLE" => json!(row.try_get_unchecked::<f64, _>(i).map_err(get_err)?),
        "DECIMAL" => json!(
            row.try_get_unchecked::<sqlx::types::Decimal, _>(i)
                .map_err(get_err)?
                .to_string()
        ),
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
            json!(row.try_get_unchecked::<String, _>(i).map_err(get_err)?)
        }
        "JSON" => row
            .try_get_unchecked::<sqlx::types::JsonValue, _>(i)
            .map_err(get_err)?,
        "DATETIME" | "TIMESTAMP" => local_time(row.try_get_unchecked(i).map_err(get_err)?)?,
        "DATE" => json!(
            row.try_get_unchecked::<time::Date, _>(i)
                .map_err(get_err)?
                .to_string()
        ),
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
            json!(BASE64.encode(row.try_get_unchecked::<Vec<u8>, _>(i).map_err(get_err)?))
        }
        other => return Err(unconvertible(&name, other)),
    })
}

/// One SQLite value as JSON, by the storage class it actually has.
fn sqlite_value(row: &SqliteRow, i: usize) -> Result<Value, String> {
    let Some((name, ty)) = name_and_type(row, i)? else {
        return Ok(Value::Null);
    };
    let get_err = |e: sqlx::Error| format!("column `{name}`: {e}");
    Ok(match ty.as_str() {
        "INTEGER" | "BOOLEAN" => json!(row.try_get_unchecked::<i64, _>(i).map_err(get_err)?),
        "REAL" => json!(row.try_get_unchecked::<f64, _>(i).map_err(get_err)?),
        "BLOB" => json!(BASE64.encode(row.try_get_unchecked::<Vec<u8>, _>(i).map_err(get_err)?)),
        _ => json!(row.try_get_unchecked::<String, _>(i).map_err(get_err)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> SqlSpec {
        toml::from_str(&format!("description = \"d\"\nsecret = \"db\"\n{extra}")).unwrap()
    }

    async fn database() -> (tempfile::TempDir, SecretString) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        conn.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, note TEXT, paid BOOLEAN, raw BLOB); \
             INSERT INTO orders VALUES (1, 7, 10.5, 'first', 1, x'00ff'), (2, 7, 20.0, NULL, 0, NULL), (3, 8, 1.0, 'other', 1, NULL);",
        )
        .await
        .unwrap();
        conn.close().await.unwrap();
        (
            dir,
            SecretString::from(format!("sqlite://{}", path.display())),
        )
    }

    #[tokio::test]
    async fn sqlite_rows_come_back_as_json_and_injection_is_just_a_value() {
        let (_dir, url) = database().await;
        let s = spec(
            "statement = \"select id, total, note, paid, raw from orders where customer_id = ?1 order by id\"\n\
             params = [{ name = \"customer_id\", type = \"string\" }]\n",
        );
        s.check().unwrap();
        let out = s.run(&url, &[json!("7")], DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(out["row_count"], 2);
        assert_eq!(
            out["rows"][0],
            json!({"id": 1, "total": 10.5, "note": "first", "paid": 1, "raw": "AP8="})
        );
        assert_eq!(out["rows"][1]["note"], Value::Null);
        let out = s
            .run(&url, &[json!("7 or 1=1")], DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(out["row_count"], 0, "{out}");
        let out = s
            .run(
                &url,
                &[json!("7'; delete from orders; --")],
                DEFAULT_TIMEOUT,
            )
            .await
            .unwrap();
        assert_eq!(out["row_count"], 0, "{out}");
        let all = spec("statement = \"select count(*) as n from orders\"\n");
        let out = all.run(&url, &[], DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(out["rows"][0]["n"], 3);
    }

    #[tokio::test]
    async fn sqlite_read_only_refuses_writes_and_rows_are_capped() {
        let (_dir, url) = database().await;
        let write = spec("statement = \"delete from orders\"\n");
        let err = write.run(&url, &[], DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, RunError::ReadOnly), "{err:?}");
        let capped = spec("statement = \"select id from orders order by id\"\nmax_rows = 2\n");
        let out = capped.run(&url, &[], DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(
            (out["row_count"].clone(), out["truncated"].clone()),
            (json!(2), json!(true))
        );
        let writer = spec(
            "statement = \"update orders set note = 'x' where id = ?\"\nread_only = false\nparams = [{ name = \"id\", type = \"integer\" }]\n",
        );
        let out = writer
            .run(&url, &[json!(3)], DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(out["rows_affected"], 1, "{out}");
    }

    #[tokio::test]
    async fn rows_are_cut_where_the_answer_would_outgrow_max_response_bytes() {
        let (_dir, url) = database().await;
        // 2000 rows of 10 kB each: 20 MB, if nothing stopped them.
        let wide = spec(
            "statement = \"with recursive c(x) as (select 1 union all select x + 1 from c where x < 2000) select hex(zeroblob(5000)) as wide from c\"\nmax_rows = 2000\n",
        );
        let out = wide.run(&url, &[], DEFAULT_TIMEOUT).await.unwrap();
        let size = out.to_string().len();
        assert!(
            (DEFAULT_MAX_RESPONSE - 11_000..=DEFAULT_MAX_RESPONSE).contains(&size),
            "as many whole rows as fit: {size} bytes"
        );
        assert_eq!(out["truncated"], true);
        let small =
            spec("statement = \"select hex(zeroblob(5000)) as wide\"\nmax_response_bytes = 1000\n");
        let err = small.run(&url, &[], DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(
            matches!(err, RunError::Refused(ref why) if why.contains("1000 bytes")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_runaway_sqlite_statement_is_stopped_at_its_timeout() {
        let (_dir, url) = database().await;
        let slow = spec(
            "statement = \"with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c\"\n",
        );
        let started = Instant::now();
        let err = slow
            .run(&url, &[], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn connection_strings_are_checked_before_they_are_stored() {
        for fine in [
            "postgres://app:pw-long-enough@db:5432/shop?sslmode=require",
            "postgresql://app@db/shop?sslmode=verify-full",
            "postgres://app:pw-long-enough@127.0.0.1/shop",
            "postgres://app:pw-long-enough@%2Fvar%2Frun%2Fpostgresql/shop",
            "mysql://app:p%40ss-long-enough@db/shop?ssl-mode=VERIFY_IDENTITY",
            "mysql://app:pw-long-enough@[::1]:3306/shop",
            "sqlite:///var/lib/shop.db",
        ] {
            assert_eq!(check_connection_string(fine), Ok(()), "{fine}");
        }
        for bad in [
            "mssql://app:hunter2-pw@db/shop",
            "postgres://app:hunter2-pw@[db/shop",
            "mysql://app:hunter2-pw@db:99999/shop",
            "hunter2-pw",
            // Too short to be masked on its own where a server quotes it.
            "postgres://app:hunter2@127.0.0.1/shop",
            "postgres://app@127.0.0.1/shop?password=hunter2",
            "mysql://app:hunter2@127.0.0.1/shop",
        ] {
            let why = check_connection_string(bad).unwrap_err();
            assert!(!why.contains("hunter2"), "{bad}: {why}");
        }
        // The drivers would fall back to clear text, where the password can be read.
        for clear in [
            "postgres://app:hunter2-pw@db/shop",
            "postgres://app:hunter2-pw@db/shop?sslmode=prefer",
            "postgres://app:hunter2-pw@localhost/shop",
            "mysql://app:hunter2-pw@db/shop",
            "mysql://app:hunter2-pw@db/shop?ssl-mode=PREFERRED",
        ] {
            let why = check_connection_string(clear).unwrap_err();
            assert!(
                why.contains("TLS") && !why.contains("hunter2"),
                "{clear}: {why}"
            );
        }
    }

    #[tokio::test]
    async fn other_connection_strings_are_the_operators_problem() {
        let s = spec("statement = \"select 1\"\n");
        for url in ["mssql://u:p@h/db", "mysql://u:p@[bad/db"] {
            let err = s
                .run(&SecretString::from(url), &[], DEFAULT_TIMEOUT)
                .await
                .unwrap_err();
            assert!(matches!(err, RunError::Misconfigured(_)), "{url}: {err:?}");
        }
    }
}
