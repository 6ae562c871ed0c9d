//! `seks approvals …`: decide requests held by a `require_approval` rule.

use anyhow::bail;
use clap::Subcommand;
use serde::Serialize;

use super::Context;
use super::output::{print_json, print_table, when, when_json};
use crate::clock;
use crate::store::{ApprovalState, DEFAULT_TENANT};

#[derive(Debug, Subcommand)]
pub(super) enum ApprovalsCommand {
    /// List held requests (pending ones unless --all).
    List {
        /// Include decided and expired ones.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a held request through.
    Approve {
        /// The approval's id (`apr_…`).
        id: String,
    },
    /// Refuse a held request; the agent gets 403 with the reason.
    Deny {
        /// The approval's id (`apr_…`).
        id: String,
        /// Why, for the agent.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Serialize)]
struct Row {
    id: String,
    state: ApprovalState,
    request: serde_json::Value,
    reason: Option<String>,
    created_at: Option<String>,
    expires_at: Option<String>,
    decided_at: Option<String>,
    decided_by: Option<String>,
}

/// Who is deciding, as recorded with the decision.
fn operator() -> String {
    std::env::var("USER").map_or_else(|_| "cli".to_owned(), |user| format!("cli:{user}"))
}

pub(super) async fn run(ctx: Context, cmd: ApprovalsCommand) -> anyhow::Result<()> {
    match cmd {
        ApprovalsCommand::List { all, json } => {
            let approvals = ctx.store.list_approvals(DEFAULT_TENANT, all).await?;
            let rows: Vec<Row> = approvals
                .into_iter()
                .map(|a| Row {
                    request: serde_json::from_str(&a.summary).unwrap_or_default(),
                    created_at: when_json(Some(a.created_at)),
                    expires_at: when_json(Some(a.expires_at)),
                    decided_at: when_json(a.decided_at),
                    id: a.id,
                    state: a.state,
                    reason: a.reason,
                    decided_by: a.decided_by,
                })
                .collect();
            if json {
                return print_json(&rows);
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let q = &r.request;
                    vec![
                        r.id.clone(),
                        r.state.as_str().to_owned(),
                        q["agent"].as_str().unwrap_or("-").to_owned(),
                        format!(
                            "{} {} {}",
                            q["provider"].as_str().unwrap_or("-"),
                            q["method"].as_str().unwrap_or("-"),
                            q["path"].as_str().unwrap_or("-")
                        ),
                        q["model"].as_str().unwrap_or("-").to_owned(),
                        r.expires_at.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "STATE", "AGENT", "REQUEST", "MODEL", "EXPIRES"],
                &table,
            );
            Ok(())
        }
        ApprovalsCommand::Approve { id } => decide(&ctx, &id, ApprovalState::Approved, None).await,
        ApprovalsCommand::Deny { id, reason } => {
            decide(&ctx, &id, ApprovalState::Denied, reason.as_deref()).await
        }
    }
}

async fn decide(
    ctx: &Context,
    id: &str,
    state: ApprovalState,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let decided = ctx
        .store
        .decide_approval(DEFAULT_TENANT, id, state, reason, &operator(), clock::now())
        .await?;
    if !decided {
        match ctx.store.approval(DEFAULT_TENANT, id).await? {
            Some(a) => bail!(
                "approval {id} is already {} ({})",
                a.state.as_str(),
                when(a.decided_at)
            ),
            None => bail!("no approval with id `{id}` (see `seks approvals list`)"),
        }
    }
    eprintln!(
        "{} {id}; the held request continues within a second",
        state.as_str()
    );
    Ok(())
}
