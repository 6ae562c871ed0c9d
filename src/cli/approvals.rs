//! `seks approvals …`: decide requests held by a `require_approval` rule.

use clap::Subcommand;

use super::backend::Backend;
use super::output::{dash, outln, print_json, print_table};
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
    /// Show one request, with a capability call's whole arguments.
    Show {
        /// The approval's id (`apr_…`).
        id: String,
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
                                .map(|a| format!(" {}", in_table(a)))
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
        ApprovalsCommand::Show { id, json } => {
            let approval = backend.approval(&id).await?;
            if json {
                return print_json(&approval);
            }
            let q = &approval.request;
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            let decided = approval
                .decided_by
                .as_deref()
                .map(|by| format!("{} by {by}", dash(approval.decided_at.as_deref())));
            for (label, value) in [
                ("id", approval.id.clone()),
                ("state", approval.state.as_str().to_owned()),
                ("agent", text(&q["agent"])),
                ("token", text(&q["token_id"])),
                (
                    "request",
                    format!(
                        "{} {} {}",
                        text(&q["provider"]),
                        text(&q["method"]),
                        text(&q["path"])
                    ),
                ),
                ("model", text(&q["model"])),
                ("rule", text(&q["rule"])),
                ("held at", dash(approval.created_at.as_deref())),
                ("expires", dash(approval.expires_at.as_deref())),
                ("decided", decided.unwrap_or_else(|| "-".to_owned())),
                ("reason", dash(approval.reason.as_deref())),
                ("arguments", text(&q["arguments"])),
            ] {
                outln!("{label:<10} {value}");
            }
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
    let outcome = match state {
        ApprovalState::Denied => "is refused",
        _ => "continues",
    };
    eprintln!(
        "{} {id}; the held request {outcome} within a second",
        state.as_str()
    );
    Ok(())
}

/// Characters of a call's arguments the list shows; `approvals show` prints them whole.
const TABLE_ARGUMENTS_CHARS: usize = 120;

/// Arguments as the list shows them: the start, and where to see the rest.
fn in_table(arguments: &str) -> String {
    if arguments.chars().count() <= TABLE_ARGUMENTS_CHARS {
        return arguments.to_owned();
    }
    let head: String = arguments.chars().take(TABLE_ARGUMENTS_CHARS).collect();
    format!("{head}… (`seks approvals show ID` shows all)")
}
