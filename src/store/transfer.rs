//! Moving a whole installation from one store to another (`seks migrate`): every row of
//! every table, copied verbatim. Sealed secrets stay sealed (their associated data binds
//! tenant, id and version, which are copied too, so they open under the same master key),
//! tokens keep their hashes, and the audit batches and their signed heads move unchanged, so
//! agents' tokens keep working and the log still verifies.
//!
//! Both backends share the table list and the SQL built from it: the source streams its
//! rows out of one read snapshot ([`Store::export`]), the destination takes them in one
//! write transaction ([`Store::import`]), a page at a time, so a long audit log is never
//! held in memory whole.

use futures_util::TryStreamExt;
use sqlx::{Database, Executor, IntoArguments, Transaction};

use super::rows::Fields;
use super::{Store, StoreError};

/// Rows handed over per page, at most.
const PAGE_ROWS: usize = 100;
/// Bytes handed over per page, roughly at most (an audit batch row can be large).
const PAGE_BYTES: usize = 4 << 20;

/// How a column is read and written.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Text, possibly NULL.
    Text,
    /// A 64-bit integer, possibly NULL.
    Int,
    /// Bytes.
    Bytes,
}

/// Where a table's rows are read from in an order the destination can insert them in.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// By these columns (the primary key).
    By(&'static str),
    /// Oldest insertion first, where a listing breaks ties by it (approvals).
    Insertion,
    /// Parent tokens before the tokens derived from them (the foreign key between them).
    Lineage,
}

/// One table an installation consists of.
#[derive(Debug)]
pub struct Table {
    /// Its name (the same in both schemas).
    pub name: &'static str,
    /// Its columns, the same in both schemas.
    columns: &'static [(&'static str, Kind)],
    /// The order it is exported in.
    order: Order,
    /// The key of rows the schema migrations insert themselves (the default tenant): the
    /// source's replace them, and they don't count as data when checking the destination.
    seeded_on: Option<&'static str>,
}

/// Every table with data, parents before the tables referring to them. Not copied:
/// `revision` (each store counts its own changes), the migrations' bookkeeping, and
/// PostgreSQL's limit leases (replicas take them afresh within seconds).
pub static TABLES: &[Table] = &[
    Table {
        name: "meta",
        columns: &[("key", Kind::Text), ("value", Kind::Text)],
        order: Order::By("key"),
        seeded_on: None,
    },
    Table {
        name: "tenants",
        columns: &[
            ("id", Kind::Text),
            ("name", Kind::Text),
            ("created_at", Kind::Int),
        ],
        order: Order::By("id"),
        seeded_on: Some("id"),
    },
    Table {
        name: "secrets",
        columns: &[
            ("id", Kind::Text),
            ("tenant_id", Kind::Text),
            ("name", Kind::Text),
            ("provider", Kind::Text),
            ("ciphertext", Kind::Bytes),
            ("nonce", Kind::Bytes),
            ("wrapped_key", Kind::Bytes),
            ("wrap_nonce", Kind::Bytes),
            ("key_version", Kind::Int),
            ("version", Kind::Int),
            ("created_at", Kind::Int),
            ("rotated_at", Kind::Int),
        ],
        order: Order::By("id"),
        seeded_on: None,
    },
    Table {
        name: "policies",
        columns: &[
            ("tenant_id", Kind::Text),
            ("name", Kind::Text),
            ("spec", Kind::Text),
            ("created_at", Kind::Int),
            ("updated_at", Kind::Int),
        ],
        order: Order::By("tenant_id, name"),
        seeded_on: None,
    },
    Table {
        name: "tokens",
        columns: &[
            ("id", Kind::Text),
            ("tenant_id", Kind::Text),
            ("agent", Kind::Text),
            ("secret_id", Kind::Text),
            ("token_hash", Kind::Bytes),
            ("hint", Kind::Text),
            ("expires_at", Kind::Int),
            ("revoked_at", Kind::Int),
            ("created_at", Kind::Int),
            ("last_used_at", Kind::Int),
            ("parent_id", Kind::Text),
            ("policy", Kind::Text),
            ("policy_name", Kind::Text),
        ],
        order: Order::Lineage,
        seeded_on: None,
    },
    Table {
        name: "capabilities",
        columns: &[
            ("tenant_id", Kind::Text),
            ("name", Kind::Text),
            ("spec", Kind::Text),
            ("created_at", Kind::Int),
            ("updated_at", Kind::Int),
        ],
        order: Order::By("tenant_id, name"),
        seeded_on: None,
    },
    Table {
        name: "approvals",
        columns: &[
            ("id", Kind::Text),
            ("tenant_id", Kind::Text),
            ("token_id", Kind::Text),
            ("summary", Kind::Text),
            ("state", Kind::Text),
            ("reason", Kind::Text),
            ("created_at", Kind::Int),
            ("expires_at", Kind::Int),
            ("decided_at", Kind::Int),
            ("decided_by", Kind::Text),
        ],
        order: Order::Insertion,
        seeded_on: None,
    },
    Table {
        name: "usage",
        columns: &[
            ("token_id", Kind::Text),
            ("day", Kind::Int),
            ("requests", Kind::Int),
            ("tokens", Kind::Int),
        ],
        order: Order::By("token_id, day"),
        seeded_on: None,
    },
    Table {
        name: "audit_batches",
        columns: &[
            ("tenant_id", Kind::Text),
            ("first_seq", Kind::Int),
            ("last_seq", Kind::Int),
            ("min_at_ms", Kind::Int),
            ("max_at_ms", Kind::Int),
            ("last_hash", Kind::Text),
            ("records", Kind::Text),
        ],
        order: Order::By("tenant_id, first_seq"),
        seeded_on: None,
    },
];

/// One column's value, as stored (ciphertext and hashes included: nothing here is plaintext).
pub enum Value {
    /// Text or NULL.
    Text(Option<String>),
    /// An integer or NULL.
    Int(Option<i64>),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl Value {
    /// Roughly what it occupies, for sizing pages.
    fn size(&self) -> usize {
        match self {
            Value::Text(text) => text.as_ref().map_or(0, String::len),
            Value::Int(_) => 8,
            Value::Bytes(bytes) => bytes.len(),
        }
    }
}

/// How many rows a table holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableRows {
    /// The table.
    pub table: &'static str,
    /// Its rows.
    pub rows: u64,
}

/// Where an export's rows go: each table in [`TABLES`] order, a page at a time, each row's
/// values in the table's column order.
#[async_trait::async_trait]
pub trait RowSink: Send {
    /// Take a page of `table`'s rows.
    async fn write(
        &mut self,
        table: &'static Table,
        rows: Vec<Vec<Value>>,
    ) -> Result<(), StoreError>;
}

/// An import in progress: one write transaction on the destination, rolled back if dropped
/// before [`Import::commit`].
#[async_trait::async_trait]
pub trait Import: RowSink {
    /// The rows each table holds now, within the transaction.
    async fn counts(&mut self) -> Result<Vec<TableRows>, StoreError>;
    /// Make the import durable.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Why a migration was refused or failed; the destination is left as it was in every case.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading the source or writing the destination failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The destination already holds an installation (or part of one).
    #[error("the destination store is not empty ({0}); migrate into a new, empty database or file")]
    NotEmpty(String),
    /// The source holds nothing to migrate.
    #[error("the source store holds no data: nothing to migrate (is it the right one?)")]
    EmptySource,
    /// A table's rows did not all arrive.
    #[error("table `{table}`: the source holds {source_rows} rows but {copied} were copied")]
    Incomplete {
        /// The table.
        table: &'static str,
        /// Rows in the source's snapshot.
        source_rows: u64,
        /// Rows found in the destination (or read from the source).
        copied: u64,
    },
}

/// Copy everything `from` holds into `to`, which must be empty, in one transaction on `to`,
/// committed only once every table holds as many rows as the source's snapshot did. Returns
/// those row counts. `from` is only read.
pub async fn copy(from: &dyn Store, to: &dyn Store) -> Result<Vec<TableRows>, TransferError> {
    let mut import = to.import().await?;
    let held: Vec<String> = import
        .counts()
        .await?
        .iter()
        .zip(TABLES)
        .filter(|(count, table)| count.rows > 0 && table.seeded_on.is_none())
        .map(|(count, _)| format!("{} {} rows", count.rows, count.table))
        .collect();
    if !held.is_empty() {
        return Err(TransferError::NotEmpty(held.join(", ")));
    }
    let mut read = Counting {
        import: import.as_mut(),
        rows: TABLES
            .iter()
            .map(|t| TableRows {
                table: t.name,
                rows: 0,
            })
            .collect(),
    };
    let source = from.export(&mut read).await?;
    let read = read.rows;
    if source
        .iter()
        .zip(TABLES)
        .all(|(count, table)| count.rows == 0 || table.seeded_on.is_some())
    {
        return Err(TransferError::EmptySource);
    }
    same_counts(&source, &read)?;
    // Counted inside the transaction: a row another writer slipped in shows up here, and
    // nothing is committed.
    same_counts(&source, &import.counts().await?)?;
    import.commit().await?;
    Ok(source)
}

/// `Incomplete` for the first table whose count differs.
fn same_counts(source: &[TableRows], copied: &[TableRows]) -> Result<(), TransferError> {
    for (s, c) in source.iter().zip(copied) {
        if s.rows != c.rows {
            return Err(TransferError::Incomplete {
                table: s.table,
                source_rows: s.rows,
                copied: c.rows,
            });
        }
    }
    Ok(())
}

/// Passes pages on to an import, counting the rows read per table.
struct Counting<'a> {
    import: &'a mut dyn Import,
    rows: Vec<TableRows>,
}

#[async_trait::async_trait]
impl RowSink for Counting<'_> {
    async fn write(
        &mut self,
        table: &'static Table,
        rows: Vec<Vec<Value>>,
    ) -> Result<(), StoreError> {
        if let Some(read) = self.rows.iter_mut().find(|c| c.table == table.name) {
            read.rows += rows.len() as u64;
        }
        self.import.write(table, rows).await
    }
}

/// The query reading `table` in export order; `insertion` is the backend's column that
/// records insertion order (SQLite's `rowid`, the PostgreSQL approvals' `ord`).
fn select_sql(table: &Table, insertion: &str) -> String {
    let columns = column_list(table);
    let name = table.name;
    match table.order {
        Order::By(key) => format!("SELECT {columns} FROM {name} ORDER BY {key}"),
        Order::Insertion => format!("SELECT {columns} FROM {name} ORDER BY {insertion}"),
        Order::Lineage => format!(
            "WITH RECURSIVE lineage (id, depth) AS (\
             SELECT id, 0 FROM {name} WHERE parent_id IS NULL UNION ALL \
             SELECT t.id, lineage.depth + 1 FROM {name} t JOIN lineage ON t.parent_id = lineage.id) \
             SELECT {columns} FROM {name} JOIN lineage USING (id) ORDER BY lineage.depth, id"
        ),
    }
}

/// The statement inserting `rows` rows into `table` (`$n` parameters: both backends take them).
fn insert_sql(table: &Table, rows: usize) -> String {
    let width = table.columns.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        table.name,
        column_list(table),
        tuples.join(", ")
    );
    if let Some(key) = table.seeded_on {
        let set: Vec<String> = table
            .columns
            .iter()
            .filter(|(c, _)| *c != key)
            .map(|(c, _)| format!("{c} = excluded.{c}"))
            .collect();
        sql.push_str(&format!(
            " ON CONFLICT ({key}) DO UPDATE SET {}",
            set.join(", ")
        ));
    }
    sql
}

fn column_list(table: &Table) -> String {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

fn decode(row: &impl Fields, table: &Table) -> Result<Vec<Value>, sqlx::Error> {
    table
        .columns
        .iter()
        .map(|&(column, kind)| {
            Ok(match kind {
                Kind::Text => Value::Text(row.opt_text(column)?),
                Kind::Int => Value::Int(row.opt_int(column)?),
                Kind::Bytes => Value::Bytes(row.bytes(column)?),
            })
        })
        .collect()
}

/// Stream every table out of `tx` into `sink`; the row counts of `tx`'s snapshot. The
/// backend has begun `tx` so that all its reads see one snapshot.
pub(super) async fn export<DB>(
    tx: &mut Transaction<'static, DB>,
    insertion: &str,
    sink: &mut dyn RowSink,
) -> Result<Vec<TableRows>, StoreError>
where
    DB: Database,
    DB::Row: Fields,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let counts = count_rows::<DB>(&mut **tx).await?;
    for table in TABLES {
        let sql = select_sql(table, insertion);
        let mut rows = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql)).fetch(&mut **tx);
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.try_next().await? {
            let values = decode(&row, table)?;
            bytes += values.iter().map(Value::size).sum::<usize>();
            page.push(values);
            if page.len() >= PAGE_ROWS || bytes >= PAGE_BYTES {
                sink.write(table, std::mem::take(&mut page)).await?;
                bytes = 0;
            }
        }
        if !page.is_empty() {
            sink.write(table, page).await?;
        }
    }
    Ok(counts)
}

/// The rows each table holds, as `conn` sees them.
async fn count_rows<DB>(conn: &mut DB::Connection) -> Result<Vec<TableRows>, StoreError>
where
    DB: Database,
    DB::Row: Fields,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut counts = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let sql = format!("SELECT COUNT(*) AS n FROM {}", table.name);
        let row = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        counts.push(TableRows {
            table: table.name,
            rows: super::rows::to_u64(row.int("n")?),
        });
    }
    Ok(counts)
}

/// An import into a backend's write transaction.
pub(super) struct Importer<DB: Database> {
    tx: Transaction<'static, DB>,
}

impl<DB: Database> Importer<DB> {
    /// Import within `tx`, which the backend has begun as a write transaction.
    pub(super) fn new(tx: Transaction<'static, DB>) -> Self {
        Importer { tx }
    }
}

#[async_trait::async_trait]
impl<DB> RowSink for Importer<DB>
where
    DB: Database,
    DB::Row: Fields,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Vec<u8>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    async fn write(
        &mut self,
        table: &'static Table,
        rows: Vec<Vec<Value>>,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = insert_sql(table, rows.len());
        let mut query = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
        for value in rows.into_iter().flatten() {
            query = match value {
                Value::Text(text) => query.bind(text),
                Value::Int(n) => query.bind(n),
                Value::Bytes(bytes) => query.bind(bytes),
            };
        }
        query.execute(&mut *self.tx).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl<DB> Import for Importer<DB>
where
    DB: Database,
    DB::Row: Fields,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Vec<u8>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    async fn counts(&mut self) -> Result<Vec<TableRows>, StoreError> {
        count_rows::<DB>(&mut self.tx).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Row};

    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn every_table_and_column_of_the_schema_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seks.db");
        SqliteStore::open(&file).await.unwrap();
        let mut conn = SqliteConnectOptions::new()
            .filename(&file)
            .connect()
            .await
            .unwrap();
        let mut schema: Vec<String> = sqlx::query(
            "SELECT m.name || '.' || c.name AS col FROM sqlite_master m, pragma_table_info(m.name) c \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
             AND m.name NOT IN ('_sqlx_migrations', 'revision')",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get("col"))
        .collect();
        let mut copied: Vec<String> = TABLES
            .iter()
            .flat_map(|t| t.columns.iter().map(|(c, _)| format!("{}.{c}", t.name)))
            .collect();
        schema.sort();
        copied.sort();
        // A new table or column must join TABLES, or `seks migrate` would leave it behind
        // (PostgreSQL's schema is the same, plus approvals' `ord`, which it assigns itself).
        assert_eq!(copied, schema);
    }
}
