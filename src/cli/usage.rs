//! `seks usage`: daily requests and LLM tokens per token and per agent, as brokers last
//! flushed them (every few seconds).

use clap::Args;

use super::backend::Backend;
use super::output::{outln, print_json, print_table};
use crate::ops::views::UsageQuery;

#[derive(Debug, Args)]
pub(super) struct UsageArgs {
    /// Days to cover, today included.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Only this token id.
    #[arg(long)]
    token: Option<String>,
    /// Only this agent's tokens.
    #[arg(long)]
    agent: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(backend: &Backend, args: &UsageArgs) -> anyhow::Result<()> {
    let report = backend
        .usage(&UsageQuery {
            days: args.days,
            token: args.token.clone(),
            agent: args.agent.clone(),
        })
        .await?;
    if args.json {
        return print_json(&report);
    }
    let rows: Vec<Vec<String>> = report
        .agents
        .iter()
        .map(|a| {
            vec![
                a.day.clone(),
                a.agent.clone(),
                a.requests.to_string(),
                a.tokens.to_string(),
            ]
        })
        .collect();
    print_table(&["DAY", "AGENT", "REQUESTS", "LLM TOKENS"], &rows);
    outln!();
    let rows: Vec<Vec<String>> = report
        .tokens
        .iter()
        .map(|t| {
            vec![
                t.day.clone(),
                t.token_id.clone(),
                t.agent.clone(),
                t.requests.to_string(),
                t.tokens.to_string(),
            ]
        })
        .collect();
    print_table(&["DAY", "TOKEN", "AGENT", "REQUESTS", "LLM TOKENS"], &rows);
    Ok(())
}
