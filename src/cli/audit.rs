//! `seks audit …`: read, export and verify the audit log.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Context;
use super::output::print_table;
use crate::audit::{self, AuditRecord, StoredRecord};
use crate::clock;
use crate::store::{AuditFilter, DEFAULT_TENANT};

/// How often `tail -f` looks for new records.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// Records read per page by `export`.
const EXPORT_PAGE: u32 = 5000;

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// The latest records; with -f, keep printing new ones.
    Tail {
        /// Keep printing records as they are written.
        #[arg(short, long)]
        follow: bool,
        /// How many of the latest records to show first.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Records matching filters, oldest first.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many (the newest matches).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Every matching record as JSON lines, with its chain fields, for archiving.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Walk the hash chain and name the first record altered, removed or reordered.
    Verify,
}

/// Filters shared by `query` and `export`.
#[derive(Debug, Args)]
pub(super) struct FilterArgs {
    /// Only this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only this provider.
    #[arg(long)]
    provider: Option<String>,
    /// Only records since a duration ago (`1h`, `7d`) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only this status (`404`) or class (`4xx`).
    #[arg(long)]
    status: Option<String>,
}

impl FilterArgs {
    fn to_filter(&self, limit: u32, newest: bool) -> anyhow::Result<AuditFilter> {
        let status = match &self.status {
            Some(text) => Some(audit::status_range(text).ok_or_else(|| {
                anyhow!("--status `{text}`: use a status (404) or a class (4xx)")
            })?),
            None => None,
        };
        Ok(AuditFilter {
            tenant: DEFAULT_TENANT.to_owned(),
            after_seq: 0,
            since_ms: self.since.as_deref().map(since_ms).transpose()?,
            agent: self.agent.clone(),
            provider: self.provider.clone(),
            status,
            limit,
            newest,
        })
    }
}

/// `1h` ago, or an RFC 3339 time, in Unix milliseconds.
fn since_ms(text: &str) -> anyhow::Result<i64> {
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        return Ok(clock::now_ms().saturating_sub(ago));
    }
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .with_context(|| format!("--since `{text}`: use a duration (1h) or an RFC 3339 time"))?;
    Ok(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

pub(super) async fn run(ctx: Context, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Tail {
            follow,
            limit,
            json,
        } => {
            let mut filter = AuditFilter {
                tenant: DEFAULT_TENANT.to_owned(),
                after_seq: 0,
                since_ms: None,
                agent: None,
                provider: None,
                status: None,
                limit,
                newest: true,
            };
            let rows = ctx.store.audit_records(&filter).await?;
            print_rows(&rows, json, true)?;
            if !follow {
                return Ok(());
            }
            filter.after_seq = rows.last().map_or(0, |r| r.seq);
            filter.newest = false;
            filter.limit = 1000;
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let rows = ctx.store.audit_records(&filter).await?;
                if let Some(last) = rows.last() {
                    filter.after_seq = last.seq;
                    print_rows(&rows, json, false)?;
                }
            }
        }
        AuditCommand::Query {
            filter,
            limit,
            json,
        } => {
            let rows = ctx
                .store
                .audit_records(&filter.to_filter(limit, true)?)
                .await?;
            print_rows(&rows, json, true)
        }
        AuditCommand::Export { filter } => {
            let mut filter = filter.to_filter(EXPORT_PAGE, false)?;
            loop {
                let rows = ctx.store.audit_records(&filter).await?;
                for row in &rows {
                    let mut line = record_json(row)?;
                    line["prev_hash"] = Value::from(row.prev_hash.as_str());
                    line["hash"] = Value::from(row.hash.as_str());
                    println!("{line}");
                }
                match rows.last() {
                    Some(last) if rows.len() == EXPORT_PAGE as usize => {
                        filter.after_seq = last.seq;
                    }
                    _ => return Ok(()),
                }
            }
        }
        AuditCommand::Verify => {
            let key = ctx.unlock_vault().await?.audit_key();
            match audit::verify(ctx.store.as_ref(), &key).await {
                Ok(tenants) if tenants.is_empty() => {
                    println!("the audit log is empty");
                    Ok(())
                }
                Ok(tenants) => {
                    for (tenant, n) in tenants {
                        println!("tenant `{tenant}`: {n} records verified, chain intact");
                    }
                    Ok(())
                }
                Err(e) => bail!("the audit log does not verify: {e}"),
            }
        }
    }
}

/// A stored record as one JSON object: its sequence number, readable time, and fields.
fn record_json(row: &StoredRecord) -> anyhow::Result<Value> {
    let mut json: Value = serde_json::from_str(&row.record)
        .with_context(|| format!("audit record {} is not JSON", row.seq))?;
    json["seq"] = Value::from(row.seq);
    json["time"] = Value::from(clock::format_ms(row.at_ms));
    Ok(json)
}

fn print_rows(rows: &[StoredRecord], json: bool, header: bool) -> anyhow::Result<()> {
    if json {
        for row in rows {
            println!("{}", record_json(row)?);
        }
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let r: AuditRecord = serde_json::from_str(&row.record).unwrap_or_default();
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            vec![
                clock::format_ms(row.at_ms),
                dash(r.agent),
                dash(r.provider),
                format!("{} {}", r.method, r.path),
                r.status.to_string(),
                match r.error {
                    Some(code) => format!("{}:{code}", r.decision.as_str()),
                    None => r.decision.as_str().to_owned(),
                },
                dash(r.model),
                dash(r.usage_tokens.map(|t| t.to_string())),
                format!("{:.1}", r.total_us as f64 / 1000.0),
                r.request_id,
            ]
        })
        .collect();
    if header {
        print_table(
            &[
                "TIME", "AGENT", "PROVIDER", "REQUEST", "STATUS", "DECISION", "MODEL", "TOKENS",
                "MS", "ID",
            ],
            &table,
        );
    } else {
        print_table(&[], &table);
    }
    Ok(())
}
