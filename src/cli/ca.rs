//! `seks ca …`: the forward proxy's certificate authority.

use anyhow::Context as _;
use clap::Subcommand;

use super::Context;
use super::output::out;
use crate::forward::ca::BrokerCa;

#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
    /// Print the CA certificate (PEM) agents must trust to use the forward proxy; the CA is
    /// made (and its key sealed in the store) on first use.
    Export,
}

pub(super) async fn run(ctx: Context, cmd: CaCommand) -> anyhow::Result<()> {
    let CaCommand::Export = cmd;
    let vault = ctx.unlock_vault().await?;
    let ca = BrokerCa::load_or_create(ctx.store.as_ref(), &vault)
        .await
        .context("loading the forward proxy's CA")?;
    out!("{}", ca.certificate_pem());
    Ok(())
}
