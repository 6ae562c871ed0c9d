//! `seks audit …`: read, export and verify the audit log, here or on a `--remote` broker.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::backend::Backend;
use super::output::{outln, print_table};
use crate::ops::audit::{AuditQuery, AuditView, MAX_AUDIT_LIMIT};

/// How often `tail -f` looks for new records.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

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
    fn query(self, limit: u32, oldest: bool) -> AuditQuery {
        AuditQuery {
            agent: self.agent,
            provider: self.provider,
            since: self.since,
            status: self.status,
            limit,
            after: 0,
            oldest,
        }
    }
}

pub(super) async fn run(backend: &Backend, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Tail {
            follow,
            limit,
            json,
        } => {
            let mut query = AuditQuery {
                limit,
                ..AuditQuery::default()
            };
            let rows = backend.audit(&query).await?;
            print_rows(&rows, json, true)?;
            if !follow {
                return Ok(());
            }
            query.after = rows.last().map_or(0, |r| r.seq);
            query.oldest = true;
            query.limit = MAX_AUDIT_LIMIT;
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let rows = backend.audit(&query).await?;
                if let Some(last) = rows.last() {
                    query.after = last.seq;
                    print_rows(&rows, json, false)?;
                }
            }
        }
        AuditCommand::Query {
            filter,
            limit,
            json,
        } => {
            let rows = backend.audit(&filter.query(limit, false)).await?;
            print_rows(&rows, json, true)
        }
        AuditCommand::Export { filter } => {
            let mut query = filter.query(MAX_AUDIT_LIMIT, true);
            loop {
                let rows = backend.audit(&query).await?;
                for row in &rows {
                    outln!("{}", serde_json::to_string(row)?);
                }
                match rows.last() {
                    Some(last) if rows.len() == MAX_AUDIT_LIMIT as usize => query.after = last.seq,
                    _ => return Ok(()),
                }
            }
        }
        AuditCommand::Verify => {
            let report = backend.verify_audit().await?;
            if let Some(problem) = report.problem {
                bail!("the audit log does not verify: {problem}");
            }
            if report.tenants.is_empty() {
                outln!("the audit log is empty");
            }
            for t in report.tenants {
                outln!(
                    "tenant `{}`: {} records verified, chain intact",
                    t.tenant,
                    t.records
                );
            }
            Ok(())
        }
    }
}

fn print_rows(rows: &[AuditView], json: bool, header: bool) -> anyhow::Result<()> {
    if json {
        for row in rows {
            outln!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let r = &row.record;
            let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
            vec![
                row.time.clone(),
                dash(r.agent.as_deref()),
                dash(r.provider.as_deref()),
                format!("{} {}", r.method, r.path),
                r.status.to_string(),
                match &r.error {
                    Some(code) => format!("{}:{code}", r.decision.as_str()),
                    None => r.decision.as_str().to_owned(),
                },
                dash(r.model.as_deref()),
                r.usage_tokens
                    .map_or_else(|| "-".to_owned(), |t| t.to_string()),
                format!("{:.1}", r.total_us as f64 / 1000.0),
                r.request_id.clone(),
            ]
        })
        .collect();
    let headers: &[&str] = if header {
        &[
            "TIME", "AGENT", "PROVIDER", "REQUEST", "STATUS", "DECISION", "MODEL", "TOKENS", "MS",
            "ID",
        ]
    } else {
        &[]
    };
    print_table(headers, &table);
    Ok(())
}
