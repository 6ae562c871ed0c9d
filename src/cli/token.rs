//! `seks token …`: agent tokens. A token is printed once, at creation; only its hash is kept.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::backend::Backend;
use super::output::{dash, out, outln, print_json, print_table};
use crate::ops::views::{DeriveTokenRequest, MintedView, NewTokenRequest, UpdateTokenRequest};
use crate::policy::{PolicySpec, Rule};

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
    /// A capability the token may invoke (repeatable; see `seks capability list`).
    #[arg(long = "capability", value_name = "NAME")]
    capabilities: Vec<String>,
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
        if !self.capabilities.is_empty() {
            spec.capabilities
                .get_or_insert_with(Vec::new)
                .extend(self.capabilities.iter().cloned());
        }
        Ok((spec != PolicySpec::default()).then_some(spec))
    }
}

/// Read and check a policy file; errors name the file, the line and the reason.
pub(super) fn read_policy_file(path: &std::path::Path) -> anyhow::Result<PolicySpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PolicySpec::from_toml(&text).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
}

pub(super) async fn run(backend: &Backend, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            secret,
            agent,
            policy,
            policy_name,
        } => {
            let req = NewTokenRequest {
                policy: policy.spec()?,
                secret,
                agent,
                policy_name,
            };
            let minted = backend.create_token(&req).await?;
            announce(&minted, &format!("on secret `{}`", req.secret));
            Ok(())
        }
        TokenCommand::Derive {
            parent,
            agent,
            policy,
        } => {
            let req = DeriveTokenRequest {
                agent,
                policy: policy.spec()?,
            };
            let minted = backend.derive_token(&parent, &req).await?;
            announce(&minted, &format!("derived from {parent}"));
            Ok(())
        }
        TokenCommand::Show { id, json } => show(backend, &id, json).await,
        TokenCommand::Update {
            id,
            policy,
            policy_name,
            no_policy_name,
        } => {
            let req = UpdateTokenRequest {
                policy: policy.spec()?,
                policy_name,
                clear_policy_name: no_policy_name,
            };
            backend.update_token(&id, &req).await?;
            eprintln!("updated token {id}; running brokers apply it within a second");
            Ok(())
        }
        TokenCommand::List { json } => list(backend, json).await,
        TokenCommand::Revoke { id } => {
            match backend.revoke_token(&id).await?.revoked {
                1 => eprintln!("revoked token {id}; running brokers refuse it within a second"),
                n => eprintln!(
                    "revoked token {id} and {} token(s) derived from it; running brokers refuse them within a second",
                    n.saturating_sub(1)
                ),
            }
            Ok(())
        }
    }
}

/// Print the token on stdout (and only it), and what it is on stderr.
fn announce(minted: &MintedView, what: &str) {
    outln!("{}", minted.token);
    let expiry = minted
        .expires_at
        .as_ref()
        .map_or_else(|| "never expires".to_owned(), |at| format!("expires {at}"));
    eprintln!(
        "created token {} for agent `{}` {what}; {expiry}. It is shown only once.",
        minted.id, minted.agent
    );
    if let Some(key_id) = &minted.access_key_id {
        eprintln!(
            "this provider signs requests: give the agent's AWS SDK access key id {key_id} \
             and the token as its secret access key (base URL http://<broker>/api/<provider>)"
        );
    }
}

async fn show(backend: &Backend, id: &str, json: bool) -> anyhow::Result<()> {
    let detail = backend.show_token(id).await?;
    if json {
        return print_json(&detail);
    }
    let t = &detail.token;
    for (label, value) in [
        ("id", t.id.clone()),
        ("agent", t.agent.clone()),
        ("secret", format!("{} ({})", t.secret, t.provider)),
        ("token", t.token.clone()),
        ("state", t.state.clone()),
        ("parent", dash(t.parent.as_deref())),
        ("created", dash(t.created_at.as_deref())),
        ("expires", dash(t.expires_at.as_deref())),
        ("revoked", dash(t.revoked_at.as_deref())),
        ("last used", dash(t.last_used_at.as_deref())),
    ] {
        outln!("{label:10} {value}");
    }
    outln!("\n# own policy");
    match &detail.policy {
        Some(spec) => out!("{}", toml::to_string_pretty(spec)?),
        None => outln!("# none: every path of the provider"),
    }
    if let Some(name) = &t.policy_name {
        outln!("\n# named policy `{name}`");
        match &detail.named_policy {
            Some(spec) => out!("{}", toml::to_string_pretty(spec)?),
            None => outln!("# missing: the token is refused until it exists again"),
        }
    }
    if t.parent.is_some() {
        outln!("\n# the parent's policies apply too (see `seks token show <parent>`)");
    }
    Ok(())
}

async fn list(backend: &Backend, json: bool) -> anyhow::Result<()> {
    let tokens = backend.list_tokens().await?;
    if json {
        return print_json(&tokens);
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let policy = match (t.own_policy, &t.policy_name) {
                (true, Some(name)) => format!("own + {name}"),
                (true, None) => "own".to_owned(),
                (false, Some(name)) => name.clone(),
                (false, None) => "-".to_owned(),
            };
            vec![
                t.id.clone(),
                t.agent.clone(),
                t.secret.clone(),
                t.provider.clone(),
                t.token.clone(),
                t.state.clone(),
                policy,
                dash(t.parent.as_deref()),
                dash(t.expires_at.as_deref()),
                dash(t.last_used_at.as_deref()),
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
