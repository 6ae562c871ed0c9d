//! `seks provider …`: the provider table this broker would serve, built-ins and config entries.

use clap::Subcommand;
use serde::Serialize;

use super::output::{print_json, print_table};
use crate::config::Settings;
use crate::providers::{Provider, Providers, TokenSource};

#[derive(Debug, Subcommand)]
pub(super) enum ProviderCommand {
    /// Every provider with its base URL, where the agent's token goes and how the key is injected.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One row of `provider list`.
#[derive(Debug, Serialize)]
struct ProviderRow {
    name: String,
    /// `built-in`, `built-in (config)` when the config overrides it, or `config`.
    origin: &'static str,
    base_url: String,
    /// Where the agent's token is looked for, in order.
    token_in: Vec<String>,
    /// How the real credential goes upstream.
    inject: String,
    http2: bool,
}

impl ProviderRow {
    fn new(provider: &Provider, settings: &Settings) -> Self {
        let configured = settings.providers.contains_key(&provider.name);
        let origin = match (Providers::is_builtin(&provider.name), configured) {
            (true, false) => "built-in",
            (true, true) => "built-in (config)",
            (false, _) => "config",
        };
        ProviderRow {
            name: provider.name.clone(),
            origin,
            base_url: provider.upstream.base_url(),
            token_in: provider
                .token_sources
                .iter()
                .map(TokenSource::describe)
                .collect(),
            inject: provider.auth.describe(),
            http2: provider.http2,
        }
    }
}

/// Needs only the config file, never the store: it runs before one is opened.
pub(super) fn run(settings: &Settings, cmd: ProviderCommand) -> anyhow::Result<()> {
    let ProviderCommand::List { json } = cmd;
    let providers = Providers::load(&settings.providers)?;
    let rows: Vec<ProviderRow> = providers
        .names()
        .into_iter()
        .filter_map(|name| providers.get(name))
        .map(|p| ProviderRow::new(p, settings))
        .collect();
    if json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            vec![
                r.name,
                r.origin.to_owned(),
                r.base_url,
                r.token_in.join(" | "),
                r.inject,
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "ORIGIN",
            "BASE URL",
            "AGENT SENDS TOKEN IN",
            "BROKER INJECTS",
        ],
        &table,
    );
    Ok(())
}
