//! `seks admin …`: the admin API's token.

use clap::Subcommand;
use secrecy::ExposeSecret;

use super::Context;
use crate::server::admin::hex;
use crate::store::META_ADMIN_TOKEN;
use crate::tokens::{self, TokenHash};

#[derive(Debug, Subcommand)]
pub(super) enum AdminCommand {
    /// Mint the admin API token (replacing any previous one); prints it, and only it, once.
    Token,
}

pub(super) async fn run(ctx: Context, cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Token => {
            let token = tokens::generate("admin");
            ctx.store
                .set_meta(
                    META_ADMIN_TOKEN,
                    &hex(&TokenHash::of(token.expose_secret()).0),
                )
                .await?;
            println!("{}", token.expose_secret());
            eprintln!(
                "minted the admin API token (any previous one stops working); send it as Authorization: Bearer <token>"
            );
            Ok(())
        }
    }
}
