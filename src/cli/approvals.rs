//! `seks approvals …`: decide requests held by a `require_approval` rule.

use clap::Subcommand;

use super::backend::Backend;
use super::output::{dash, print_json, print_table};
use crate::store::ApprovalState;

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

pub(super) async fn run(backend: &Backend, cmd: ApprovalsCommand) -> anyhow::Result<()> {
    match cmd {
        ApprovalsCommand::List { all, json } => {
            let rows = backend.list_approvals(all).await?;
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
                            "{} {} {}{}",
                            q["provider"].as_str().unwrap_or("-"),
                            q["method"].as_str().unwrap_or("-"),
                            q["path"].as_str().unwrap_or("-"),
                            q["arguments"]
                                .as_str()
                                .map(|a| format!(" {a}"))
                                .unwrap_or_default()
                        ),
                        q["model"].as_str().unwrap_or("-").to_owned(),
                        dash(r.expires_at.as_deref()),
                    ]
                })
                .collect();
            print_table(
                &["ID", "STATE", "AGENT", "REQUEST", "MODEL", "EXPIRES"],
                &table,
            );
            Ok(())
        }
        ApprovalsCommand::Approve { id } => {
            decide(backend, &id, ApprovalState::Approved, None).await
        }
        ApprovalsCommand::Deny { id, reason } => {
            decide(backend, &id, ApprovalState::Denied, reason.as_deref()).await
        }
    }
}

async fn decide(
    backend: &Backend,
    id: &str,
    state: ApprovalState,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    backend.decide(id, state, reason).await?;
    eprintln!(
        "{} {id}; the held request continues within a second",
        state.as_str()
    );
    Ok(())
}
