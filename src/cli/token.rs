//! `seks token …`: agent tokens. A token is printed once, at creation; only its hash is kept.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::Context;
use super::output::{print_json, print_table, when, when_json};
use crate::clock;
use crate::grants::{self, Mint, Minted};
use crate::policy::{self, PolicySpec, Rule};
use crate::store::{DEFAULT_TENANT, TokenRecord};

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
        #[command(flatten)]
        policy: PolicyArgs,
        /// A named policy (see `seks policy`) the token also follows.
        #[arg(long, value_name = "NAME")]
        policy_name: Option<String>,
    },
    /// Mint a child of a token: its policy is the parent's narrowed by its own, and it dies
    /// with its parent. Prints the token only.
    Derive {
        /// The parent token's id.
        parent: String,
        /// Agent name (default: the parent's, marked as a child).
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Show a token: state, lineage, and its policies.
    Show {
        /// The token's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a token's policy (and optionally its named policy); running brokers apply it
    /// within a second.
    Update {
        /// The token's id.
        id: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Follow this named policy from now on.
        #[arg(long, value_name = "NAME", conflicts_with = "no_policy_name")]
        policy_name: Option<String>,
        /// Stop following a named policy.
        #[arg(long)]
        no_policy_name: bool,
    },
    /// List tokens (ids, agents, state; never the tokens themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (and every token derived from it); running brokers refuse it within a
    /// second.
    Revoke {
        /// The token's id (`tok_…`, see `seks token list`).
        id: String,
    },
}

/// A policy from a TOML file and/or flags; flags add to the file's lists and override its
/// limits.
#[derive(Debug, Args)]
pub(super) struct PolicyArgs {
    /// Policy file (TOML; see `seks policy check`).
    #[arg(long = "policy", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Allow requests matching `METHOD /path/glob` (repeatable); no allow rule means all.
    #[arg(long = "allow", value_name = "RULE")]
    allow: Vec<String>,
    /// Refuse requests matching `METHOD /path/glob` (repeatable); deny wins.
    #[arg(long = "deny", value_name = "RULE")]
    deny: Vec<String>,
    /// Hold requests matching `METHOD /path/glob` for a person's approval (repeatable).
    #[arg(long = "require-approval", value_name = "RULE")]
    require_approval: Vec<String>,
    /// Allowed model (repeatable).
    #[arg(long = "model", value_name = "MODEL")]
    models: Vec<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<NonZeroU32>,
    /// Requests in flight at once.
    #[arg(long)]
    concurrency: Option<NonZeroU32>,
    /// Requests per UTC day.
    #[arg(long)]
    daily_requests: Option<u64>,
    /// LLM tokens per UTC day.
    #[arg(long)]
    daily_tokens: Option<u64>,
    /// Lifetime, e.g. `30m`, `12h`, `7d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
}

impl PolicyArgs {
    /// The policy these arguments describe; `None` when none was given.
    fn spec(&self) -> anyhow::Result<Option<PolicySpec>> {
        let mut spec = match &self.file {
            Some(path) => read_policy_file(path)?,
            None => PolicySpec::default(),
        };
        let rules = |texts: &[String]| -> anyhow::Result<Vec<Rule>> {
            texts
                .iter()
                .map(|t| Rule::try_from(t.clone()).map_err(anyhow::Error::msg))
                .collect()
        };
        if !self.allow.is_empty() {
            spec.allow
                .get_or_insert_with(Vec::new)
                .extend(rules(&self.allow)?);
        }
        spec.deny.extend(rules(&self.deny)?);
        spec.require_approval.extend(rules(&self.require_approval)?);
        if !self.models.is_empty() {
            spec.models
                .get_or_insert_with(Vec::new)
                .extend(self.models.iter().cloned());
        }
        spec.rpm = self.rpm.or(spec.rpm);
        spec.concurrency = self.concurrency.or(spec.concurrency);
        spec.daily_requests = self.daily_requests.or(spec.daily_requests);
        spec.daily_tokens = self.daily_tokens.or(spec.daily_tokens);
        spec.ttl = self.ttl.or(spec.ttl);
        Ok((spec != PolicySpec::default()).then_some(spec))
    }
}

/// Read and check a policy file; errors name the file, the line and the reason.
pub(super) fn read_policy_file(path: &std::path::Path) -> anyhow::Result<PolicySpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PolicySpec::from_toml(&text).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
}

pub(super) async fn run(ctx: Context, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            secret,
            agent,
            policy,
            policy_name,
        } => create(&ctx, &secret, &agent, &policy, policy_name.as_deref()).await,
        TokenCommand::Derive {
            parent,
            agent,
            policy,
        } => derive(&ctx, &parent, agent.as_deref(), &policy).await,
        TokenCommand::Show { id, json } => show(&ctx, &id, json).await,
        TokenCommand::Update {
            id,
            policy,
            policy_name,
            no_policy_name,
        } => update(&ctx, &id, &policy, policy_name.as_deref(), no_policy_name).await,
        TokenCommand::List { json } => list(&ctx, json).await,
        TokenCommand::Revoke { id } => revoke(&ctx, &id).await,
    }
}

async fn check_policy_name(ctx: &Context, name: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = name
        && ctx.store.policy(DEFAULT_TENANT, name).await?.is_none()
    {
        bail!("no policy named `{name}` (see `seks policy list`)");
    }
    Ok(())
}

async fn create(
    ctx: &Context,
    secret_name: &str,
    agent: &str,
    policy: &PolicyArgs,
    policy_name: Option<&str>,
) -> anyhow::Result<()> {
    let spec = policy.spec()?;
    check_policy_name(ctx, policy_name).await?;
    let secret = ctx
        .store
        .secret_by_name(DEFAULT_TENANT, secret_name)
        .await?
        .with_context(|| format!("no secret named `{secret_name}` (see `seks secret list`)"))?;
    let now = clock::now();
    let minted = grants::mint(
        ctx.store.as_ref(),
        Mint {
            tenant: &secret.tenant,
            secret_id: &secret.id,
            provider: &secret.provider,
            agent,
            policy: spec.as_ref(),
            policy_name,
            expires_at: spec.as_ref().and_then(|s| s.expiry_from(now)),
            parent_id: None,
        },
        now,
    )
    .await?;
    announce(
        &minted,
        &format!("on secret `{secret_name}` ({})", secret.provider),
    );
    Ok(())
}

async fn derive(
    ctx: &Context,
    parent_id: &str,
    agent: Option<&str>,
    policy: &PolicyArgs,
) -> anyhow::Result<()> {
    let spec = policy.spec()?;
    let parent = ctx
        .store
        .token_by_id(DEFAULT_TENANT, parent_id)
        .await?
        .with_context(|| format!("no token with id `{parent_id}`"))?;
    let ttl = spec
        .as_ref()
        .and_then(|s| s.ttl)
        .map(|t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
    let minted = grants::derive(
        ctx.store.as_ref(),
        &parent,
        spec.as_ref(),
        ttl,
        agent,
        clock::now(),
    )
    .await?;
    announce(&minted, &format!("derived from {parent_id}"));
    Ok(())
}

/// Print the token on stdout (and only it), and what it is on stderr.
fn announce(minted: &Minted, what: &str) {
    println!("{}", minted.token.expose_secret());
    let r = &minted.record;
    let expiry = r.expires_at.map_or_else(
        || "never expires".to_owned(),
        |at| format!("expires {}", clock::format(at)),
    );
    eprintln!(
        "created token {} for agent `{}` {what}; {expiry}. It is shown only once.",
        r.id, r.agent
    );
}

/// A token's state as people read it.
fn state(t: &TokenRecord, now: i64) -> &'static str {
    match policy::check_lifetime(t, now) {
        Ok(()) => "active",
        Err(policy::Denial::Revoked(_)) => "revoked",
        Err(_) => "expired",
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
    parent: Option<&'a str>,
    policy_name: Option<&'a str>,
    created_at: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
}

impl<'a> TokenRow<'a> {
    fn of(t: &'a TokenRecord, now: i64) -> Self {
        TokenRow {
            id: &t.id,
            agent: &t.agent,
            secret: &t.secret_name,
            provider: &t.provider,
            token: &t.hint,
            state: state(t, now),
            parent: t.parent_id.as_deref(),
            policy_name: t.policy_name.as_deref(),
            created_at: when_json(Some(t.created_at)),
            expires_at: when_json(t.expires_at),
            revoked_at: when_json(t.revoked_at),
            last_used_at: when_json(t.last_used_at),
        }
    }
}

async fn show(ctx: &Context, id: &str, json: bool) -> anyhow::Result<()> {
    let token = ctx
        .store
        .token_by_id(DEFAULT_TENANT, id)
        .await?
        .with_context(|| format!("no token with id `{id}`"))?;
    let own: Option<PolicySpec> = token
        .policy
        .as_deref()
        .map(serde_json::from_str)
        .transpose()?;
    let named = match &token.policy_name {
        Some(name) => ctx.store.policy(DEFAULT_TENANT, name).await?,
        None => None,
    };
    let named_spec: Option<PolicySpec> = named
        .as_ref()
        .map(|p| serde_json::from_str(&p.spec))
        .transpose()?;
    let now = clock::now();
    if json {
        return print_json(&serde_json::json!({
            "token": TokenRow::of(&token, now),
            "policy": own,
            "named_policy": named_spec,
        }));
    }
    let row = TokenRow::of(&token, now);
    for (label, value) in [
        ("id", row.id.to_owned()),
        ("agent", row.agent.to_owned()),
        ("secret", format!("{} ({})", row.secret, row.provider)),
        ("token", row.token.to_owned()),
        ("state", row.state.to_owned()),
        ("parent", row.parent.unwrap_or("-").to_owned()),
        ("created", when(Some(token.created_at))),
        ("expires", when(token.expires_at)),
        ("revoked", when(token.revoked_at)),
        ("last used", when(token.last_used_at)),
    ] {
        println!("{label:10} {value}");
    }
    println!("\n# own policy");
    match &own {
        Some(spec) => print!("{}", toml::to_string_pretty(spec)?),
        None => println!("# none: every path of the provider"),
    }
    if let Some(name) = &token.policy_name {
        println!("\n# named policy `{name}`");
        match &named_spec {
            Some(spec) => print!("{}", toml::to_string_pretty(spec)?),
            None => println!("# missing: the token is refused until it exists again"),
        }
    }
    if token.parent_id.is_some() {
        println!("\n# the parent's policies apply too (see `seks token show <parent>`)");
    }
    Ok(())
}

async fn update(
    ctx: &Context,
    id: &str,
    policy: &PolicyArgs,
    policy_name: Option<&str>,
    no_policy_name: bool,
) -> anyhow::Result<()> {
    let token = ctx
        .store
        .token_by_id(DEFAULT_TENANT, id)
        .await?
        .with_context(|| format!("no token with id `{id}`"))?;
    let spec = policy.spec()?;
    if spec.is_none() && policy_name.is_none() && !no_policy_name {
        bail!(
            "nothing to update: give a policy (--policy FILE or rule/limit flags) or --policy-name"
        );
    }
    check_policy_name(ctx, policy_name).await?;
    let now = clock::now();
    let policy_json = match &spec {
        Some(spec) => Some(serde_json::to_string(spec)?),
        None => token.policy.clone(),
    };
    let name = if no_policy_name {
        None
    } else {
        policy_name.map(str::to_owned).or(token.policy_name.clone())
    };
    let expires_at = spec
        .as_ref()
        .and_then(|s| s.expiry_from(now))
        .or(token.expires_at);
    ctx.store
        .update_token_policy(
            DEFAULT_TENANT,
            id,
            policy_json.as_deref(),
            name.as_deref(),
            expires_at,
        )
        .await?;
    eprintln!("updated token {id}; running brokers apply it within a second");
    Ok(())
}

async fn list(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let tokens = ctx.store.list_tokens(DEFAULT_TENANT).await?;
    let now = clock::now();
    if json {
        let rows: Vec<TokenRow<'_>> = tokens.iter().map(|t| TokenRow::of(t, now)).collect();
        return print_json(&rows);
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let policy = match (&t.policy, &t.policy_name) {
                (Some(_), Some(name)) => format!("own + {name}"),
                (Some(_), None) => "own".to_owned(),
                (None, Some(name)) => name.clone(),
                (None, None) => "-".to_owned(),
            };
            vec![
                t.id.clone(),
                t.agent.clone(),
                t.secret_name.clone(),
                t.provider.clone(),
                t.hint.clone(),
                state(t, now).to_owned(),
                policy,
                t.parent_id.clone().unwrap_or_else(|| "-".to_owned()),
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
            "POLICY",
            "PARENT",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
    Ok(())
}

async fn revoke(ctx: &Context, id: &str) -> anyhow::Result<()> {
    match ctx
        .store
        .revoke_token(DEFAULT_TENANT, id, clock::now())
        .await?
    {
        0 => bail!("no active token with id `{id}` (see `seks token list`)"),
        1 => eprintln!("revoked token {id}; running brokers refuse it within a second"),
        n => eprintln!(
            "revoked token {id} and {} token(s) derived from it; running brokers refuse them within a second",
            n - 1
        ),
    }
    Ok(())
}
