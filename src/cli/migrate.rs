//! `seks migrate`: move an installation to another store (SQLite to PostgreSQL, or back),
//! every row verbatim, then check the copy: row counts before committing, the audit chains
//! on the destination after.

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use super::load_master_key;
use super::output::{outln, print_json, print_table};
use crate::audit::{self, ChainKey, VerifyError};
use crate::config::Settings;
use crate::ops::audit::TenantVerified;
use crate::ops::master_key::open_vault;
use crate::store::transfer::{self, TableRows};
use crate::store::{Location, META_KEY_CHECK, Store};
use crate::vault::Vault;

#[derive(Debug, Args)]
pub(super) struct MigrateArgs {
    /// The store to copy [default: this installation's: store.url, SEKS_STORE_URL or the
    /// data directory]
    #[arg(
        long,
        env = "SEKS_MIGRATE_FROM",
        hide_env_values = true,
        value_name = "URL"
    )]
    from: Option<String>,
    /// The store to copy into, which must be empty: sqlite:///PATH or postgres://… (a URL
    /// with a password is better given in SEKS_MIGRATE_TO, out of the process list)
    #[arg(
        long,
        env = "SEKS_MIGRATE_TO",
        hide_env_values = true,
        value_name = "URL"
    )]
    to: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What was moved and checked.
#[derive(Serialize)]
struct Report {
    /// The source, password masked.
    from: String,
    /// The destination, password masked.
    to: String,
    /// Rows copied per table.
    tables: Vec<TableRows>,
    /// The audit chains verified on the destination (none when the source never had a
    /// master key, so nothing sealed or signed).
    audit: Vec<TenantVerified>,
}

pub(super) async fn run(settings: &Settings, args: MigrateArgs) -> anyhow::Result<()> {
    let from = Location::parse(
        args.from.as_deref().or(settings.store_url.as_deref()),
        &settings.data_dir,
    )?;
    let to = Location::parse(Some(&args.to), &settings.data_dir)?;
    if from == to {
        bail!("--from and --to name the same store ({from})");
    }
    // Opening a SQLite store creates the file: a mistyped source must not become an empty one.
    if let Location::Sqlite(file) = &from
        && !file.exists()
    {
        bail!("there is no store at {from}");
    }
    let source = from
        .open()
        .await
        .with_context(|| format!("opening the source store {from}"))?;
    // Checked before the destination is touched: copied under the wrong key, the
    // installation would open nowhere.
    let vault = match source.meta(META_KEY_CHECK).await? {
        Some(_) => {
            let (key, _) = load_master_key(settings, false)?;
            let vault = open_vault(source.as_ref(), Vault::new(key))
                .await
                .with_context(|| format!("checking the master key against {from}"))?;
            Some(vault)
        }
        None => None,
    };
    let destination = to
        .open()
        .await
        .with_context(|| format!("opening the destination store {to}"))?;
    let tables = transfer::copy(source.as_ref(), destination.as_ref())
        .await
        .with_context(|| format!("migrating {from} to {to}; the destination was left as it was"))?;
    let audit = match &vault {
        Some(vault) => verify_audit(source.as_ref(), destination.as_ref(), &vault.audit_key())
            .await
            .with_context(|| format!("migrated {from} to {to}, but"))?,
        None => Vec::new(),
    };
    let report = Report {
        from: from.to_string(),
        to: to.to_string(),
        tables,
        audit,
    };
    if args.json {
        print_json(&report)?;
    } else {
        outln!("migrated {} to {}", report.from, report.to);
        let rows: Vec<Vec<String>> = report
            .tables
            .iter()
            .map(|t| vec![t.table.to_owned(), t.rows.to_string()])
            .collect();
        print_table(&["TABLE", "ROWS"], &rows);
        for t in &report.audit {
            outln!(
                "audit log on the destination: tenant `{}`: {} records verified, chain intact",
                t.tenant,
                t.records
            );
        }
    }
    eprintln!(
        "the source was not changed; point every broker at the destination (store.url or SEKS_STORE_URL) with the same master key"
    );
    Ok(())
}

/// Walk the audit chains on the destination; when they fail, say whether the source's
/// already did (a faithful copy of a broken log) or not (a bad copy).
async fn verify_audit(
    source: &dyn Store,
    destination: &dyn Store,
    key: &ChainKey,
) -> anyhow::Result<Vec<TenantVerified>> {
    let problem = match audit::verify(destination, key).await {
        Ok(tenants) => {
            return Ok(tenants
                .into_iter()
                .map(|(tenant, records)| TenantVerified { tenant, records })
                .collect());
        }
        Err(VerifyError::Chain(problem)) => problem,
        Err(e) => return Err(e.into()),
    };
    match audit::verify(source, key).await {
        Ok(_) => bail!(
            "the audit log does not verify on the destination: {problem} (it does on the source)"
        ),
        Err(VerifyError::Chain(old)) => bail!(
            "the audit log does not verify on the destination: {problem} (nor on the source: {old}; it was broken before)"
        ),
        Err(e) => Err(e.into()),
    }
}
