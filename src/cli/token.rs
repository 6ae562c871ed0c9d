//! `seks token …`: agent tokens. A token is printed once, at creation; only its hash is kept.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use secrecy::ExposeSecret;
use serde::Serialize;

use super::Context;
use super::output::{print_json, print_table, when, when_json};
use crate::store::{DEFAULT_TENANT, NewToken, TokenRecord};
use crate::tokens::{self, TokenHash};
use crate::{clock, policy};

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Mint a token for an agent; prints the token, and only the token, on stdout.
    Create {
        /// The secret the token unlocks.
        #[arg(long)]
        secret: String,
        /// Name of the agent the token is for (shown in listings and logs).
        #[arg(long, default_value = "default")]
        agent: String,
        /// Lifetime, e.g. `30m`, `12h`, `7d`; no expiry when omitted.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List tokens (ids, agents, state; never the tokens themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; running brokers refuse it within a second.
    Revoke {
        /// The token's id (`tok_…`, see `seks token list`).
        id: String,
    },
}

pub(super) async fn run(ctx: Context, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { secret, agent, ttl } => create(&ctx, &secret, &agent, ttl).await,
        TokenCommand::List { json } => list(&ctx, json).await,
        TokenCommand::Revoke { id } => revoke(&ctx, &id).await,
    }
}

async fn create(
    ctx: &Context,
    secret_name: &str,
    agent: &str,
    ttl: Option<Duration>,
) -> anyhow::Result<()> {
    if agent.is_empty() || agent.len() > 128 || agent.chars().any(char::is_control) {
        bail!("agent names are 1-128 printable characters");
    }
    let secret = ctx
        .store
        .secret_by_name(DEFAULT_TENANT, secret_name)
        .await?
        .with_context(|| format!("no secret named `{secret_name}` (see `seks secret list`)"))?;
    let now = clock::now();
    let expires_at = match ttl {
        Some(ttl) => Some(
            i64::try_from(ttl.as_secs())
                .ok()
                .and_then(|s| now.checked_add(s.max(1)))
                .context("--ttl is too long")?,
        ),
        None => None,
    };
    let token = tokens::generate(&secret.provider);
    let id = format!("tok_{}", tokens::random_base62(16));
    ctx.store
        .insert_token(&NewToken {
            id: id.clone(),
            tenant: secret.tenant.clone(),
            agent: agent.to_owned(),
            secret_id: secret.id.clone(),
            hash: TokenHash::of(token.expose_secret()),
            hint: tokens::hint_of(&token),
            expires_at,
            created_at: now,
        })
        .await?;
    println!("{}", token.expose_secret());
    let expiry = expires_at.map_or_else(
        || "never expires".to_owned(),
        |at| format!("expires {}", clock::format(at)),
    );
    eprintln!(
        "created token {id} for agent `{agent}` on secret `{secret_name}` ({}); {expiry}. It is shown only once.",
        secret.provider
    );
    Ok(())
}

/// A token's state as people read it.
fn state(t: &TokenRecord, now: i64) -> &'static str {
    match policy::check(t, now) {
        Ok(()) => "active",
        Err(policy::Denial::Revoked(_)) => "revoked",
        Err(policy::Denial::Expired(_)) => "expired",
    }
}

#[derive(Serialize)]
struct TokenRow<'a> {
    id: &'a str,
    agent: &'a str,
    secret: &'a str,
    provider: &'a str,
    token: &'a str,
    state: &'static str,
    created_at: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
}

async fn list(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let tokens = ctx.store.list_tokens(DEFAULT_TENANT).await?;
    let now = clock::now();
    if json {
        let rows: Vec<TokenRow<'_>> = tokens
            .iter()
            .map(|t| TokenRow {
                id: &t.id,
                agent: &t.agent,
                secret: &t.secret_name,
                provider: &t.provider,
                token: &t.hint,
                state: state(t, now),
                created_at: when_json(Some(t.created_at)),
                expires_at: when_json(t.expires_at),
                revoked_at: when_json(t.revoked_at),
                last_used_at: when_json(t.last_used_at),
            })
            .collect();
        return print_json(&rows);
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.agent.clone(),
                t.secret_name.clone(),
                t.provider.clone(),
                t.hint.clone(),
                state(t, now).to_owned(),
                when(Some(t.created_at)),
                when(t.expires_at),
                when(t.last_used_at),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "AGENT",
            "SECRET",
            "PROVIDER",
            "TOKEN",
            "STATE",
            "CREATED",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
    Ok(())
}

async fn revoke(ctx: &Context, id: &str) -> anyhow::Result<()> {
    if ctx
        .store
        .revoke_token(DEFAULT_TENANT, id, clock::now())
        .await?
    {
        eprintln!("revoked token {id}; running brokers refuse it within a second");
        Ok(())
    } else {
        bail!("no active token with id `{id}` (see `seks token list`)")
    }
}
