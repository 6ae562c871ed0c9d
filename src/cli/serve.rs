//! `seks serve`: run the broker until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;

use super::Context;
use crate::approvals::Approvals;
use crate::audit::{self, Auditor};
use crate::capabilities::Catalog;
use crate::capabilities::invoke::Capabilities;
use crate::config::{AdminListen, LogFormat};
use crate::forward::{self, ForwardProxy, ca::BrokerCa};
use crate::keyring::Keyring;
use crate::ops::Ops;
use crate::policy::limits::Limits;
use crate::proxy::{Proxy, ProxyLimits, Resolver, Upstreams};
use crate::server;
use crate::store::DEFAULT_TENANT;

/// How long open requests (e.g. long SSE streams) may finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long connections get to close once their streams are cut off.
const CUT_OFF_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address for agents to connect to [default: 127.0.0.1:8080]
    #[arg(long, env = "SEKS_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin API, or `off` [default: 127.0.0.1:8081]. Mint its token with
    /// `seks admin token create`.
    #[arg(long, env = "SEKS_ADMIN_LISTEN", value_name = "ADDR|off")]
    pub admin_listen: Option<AdminListen>,
    /// Log format [default: text]
    #[arg(long, env = "SEKS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address of the forward proxy for HTTPS_PROXY clients [default: off]
    #[arg(long, env = "SEKS_PROXY_LISTEN", value_name = "ADDR")]
    pub proxy_listen: Option<SocketAddr>,
}

pub(super) async fn run(ctx: Context) -> anyhow::Result<()> {
    let providers = ctx.providers()?;
    let vault = Arc::new(ctx.unlock_vault().await?);
    let resolver = Resolver::new(&ctx.settings.resolve, None)?;
    let upstreams = Upstreams::with_resolver(&ctx.settings.upstream, resolver)?;
    let (audit_key, retention_key) = (vault.audit_key(), vault.audit_key());
    let outage_grace = ctx.settings.store_outage_grace;
    let keyring = Arc::new(
        Keyring::new(ctx.store.clone(), vault.clone(), ctx.redactor.clone())
            .with_outage_grace(outage_grace),
    );
    keyring.sync().await.context("reading the store")?;
    let sync_task = tokio::spawn(keyring.clone().run_sync_loop());

    let counters = Arc::new(Limits::new(ctx.store.clone()).with_outage_grace(outage_grace));
    let flush_task = tokio::spawn(counters.clone().run_flush_loop());
    let webhook = match &ctx.settings.approvals.webhook_url {
        Some(url) => Some((webhook_uri(url)?, upstreams.client(false).clone())),
        None => None,
    };
    let approvals = Approvals::new(ctx.store.clone(), ctx.settings.approvals.timeout, webhook);
    let limits = ProxyLimits {
        max_body_bytes: ctx.settings.max_body_bytes,
        max_policy_body_bytes: ctx.settings.max_policy_body_bytes,
        response_timeout: ctx.settings.upstream.response_timeout,
        read_timeout: ctx.settings.upstream.read_timeout,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let audit = &ctx.settings.audit;
    let (auditor, audit_writer) =
        Auditor::new(ctx.store.clone(), audit_key, ctx.redactor.clone(), audit);
    if !audit.enabled {
        tracing::warn!("the audit log is off (audit.enabled = false): requests leave no record");
    }
    // The writer stops last, after the requests still open at shutdown have ended.
    let (audit_stop, audit_stopped) = tokio::sync::watch::channel(false);
    let audit_task = tokio::spawn(audit::run_writer(audit_writer, audit_stopped));
    let retention_task = audit
        .retain_days
        .map(|days| tokio::spawn(audit::run_retention(ctx.store.clone(), retention_key, days)));
    let auditor = Arc::new(auditor.with_outage_grace(outage_grace));
    let catalog = Catalog::new(
        &ctx.settings.capabilities,
        providers.clone(),
        ctx.store.clone(),
    )?;
    let runner = ctx.runner(keyring.clone(), providers.clone(), upstreams.clone())?;
    // Turns true when what is still open at shutdown (streams, WebSocket sessions) must end.
    let (cut_off, cut_off_rx) = tokio::sync::watch::channel(false);
    let proxy = Arc::new(Proxy::new(
        providers.clone(),
        keyring.clone(),
        vault.signing_tokens(),
        counters.clone(),
        approvals,
        upstreams,
        limits,
        auditor.clone(),
        cut_off_rx.clone(),
    ));
    let capabilities = Arc::new(Capabilities::new(
        catalog,
        runner,
        proxy.clone(),
        ctx.redactor.clone(),
    ));
    let listener = TcpListener::bind(ctx.settings.listen)
        .await
        .with_context(|| format!("binding {}", ctx.settings.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(data_dir = %ctx.settings.data_dir.display(), "listening on http://{addr}");
    if ctx.store.list_secrets(DEFAULT_TENANT).await?.is_empty() {
        print_first_steps(&ctx, addr);
    }

    let admin = match ctx.settings.admin_listen {
        Some(admin_addr) => {
            let admin_listener = TcpListener::bind(admin_addr).await.with_context(|| {
                format!(
                    "binding the admin API on {admin_addr} (set `admin_listen` or \
                     --admin-listen to another address, or to `off`)"
                )
            })?;
            tracing::info!("admin API on http://{}", admin_listener.local_addr()?);
            if !admin_addr.ip().is_loopback() {
                tracing::warn!(
                    "the admin API listens on {admin_addr} over plain HTTP: the admin token and \
                     secret values sent to it cross the network in clear text unless TLS is \
                     put in front of it"
                );
            }
            if ctx
                .store
                .meta(crate::store::META_ADMIN_TOKEN)
                .await?
                .is_none()
            {
                tracing::warn!("no admin token yet: mint one with `seks admin token create`");
            }
            let admin_state = Arc::new(server::admin::AdminState {
                ops: Ops::new(ctx.store.clone(), ctx.providers()?),
                vault: vault.clone(),
                store: ctx.store.clone(),
                capabilities: capabilities.clone(),
                auditor: auditor.clone(),
            });
            let mut stopped = stop_rx.clone();
            Some(tokio::spawn(server::run_admin(
                admin_listener,
                admin_state,
                async move {
                    let _ = stopped.changed().await;
                },
            )))
        }
        None => None,
    };
    let forward = match ctx.settings.forward.listen {
        Some(forward_addr) => {
            let ca = BrokerCa::load_or_create(ctx.store.as_ref(), &vault)
                .await
                .context("loading the forward proxy's CA")?;
            let forward_proxy = Arc::new(ForwardProxy::new(
                proxy.clone(),
                keyring.clone(),
                providers,
                Arc::new(ca),
                &ctx.settings,
                cut_off_rx.clone(),
            )?);
            let forward_listener = TcpListener::bind(forward_addr)
                .await
                .with_context(|| format!("binding the forward proxy on {forward_addr}"))?;
            tracing::info!(
                "forward proxy on http://{} (agents: HTTPS_PROXY=http://agent:<token>@{0}, CA from `seks ca export`)",
                forward_listener.local_addr()?
            );
            let mut stopped = stop_rx.clone();
            Some(tokio::spawn(forward::run(
                forward_listener,
                forward_proxy,
                async move {
                    let _ = stopped.changed().await;
                },
            )))
        }
        None => None,
    };
    let mut stopped = stop_rx.clone();
    let max_arguments_bytes =
        usize::try_from(ctx.settings.max_policy_body_bytes).unwrap_or(usize::MAX);
    let draining = Arc::clone(&proxy);
    let state = Arc::new(server::AppState {
        proxy,
        keyring: keyring.clone(),
        store: ctx.store.clone(),
        derives: server::derive::DeriveLimiter::default(),
        auditor,
        cut_off: cut_off_rx,
        mcp: server::mcp::service(capabilities.clone(), max_arguments_bytes),
        capabilities,
        max_arguments_bytes,
    });
    let server = tokio::spawn(server::run(listener, state, async move {
        let _ = stopped.changed().await;
    }));
    // aws-lc seeds its random generator with CPU-jitter entropy, some 30 ms, the first time
    // it is asked for bytes; asking now, off the runtime, keeps the first TLS handshake to an
    // upstream from stalling every request on it.
    tokio::task::spawn_blocking(|| aws_lc_rs::rand::fill(&mut [0u8; 1]));
    // Both listeners drain within the same grace, and so do WebSocket sessions, which an
    // upgraded connection takes out of its listener's drain.
    let mut server = tokio::spawn(async move {
        let agents = server.await;
        if let Some(forward) = forward
            && let Ok(Err(e)) = forward.await
        {
            tracing::error!(error = %e, "the forward proxy failed");
        }
        draining.sessions().drained().await;
        agents
    });
    shutdown_signal().await;
    tracing::info!("shutting down; open requests get {SHUTDOWN_GRACE:?} to finish");
    let _ = stop_tx.send(true);
    if let Some(admin) = admin {
        admin.abort();
    }
    if let Ok(joined) = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        joined
            .context("server task")?
            .context("server task")?
            .context("serving")?;
    } else {
        tracing::warn!("open requests did not finish in time; cutting them off");
        let _ = cut_off.send(true);
        // Their connections close and their records are queued before the writer stops.
        if tokio::time::timeout(CUT_OFF_WAIT, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close; their records may be lost");
        }
    }
    sync_task.abort();
    flush_task.abort();
    if let Some(task) = retention_task {
        task.abort();
    }
    let _ = audit_stop.send(true);
    if audit_task.await.is_err() {
        tracing::error!("the audit writer failed at shutdown");
    }
    if let Err(e) = keyring.flush_uses().await {
        tracing::warn!(error = %e, "could not record token use times");
    }
    if let Err(e) = counters.flush().await {
        tracing::warn!(error = %e, "could not record usage counters");
    }
    Ok(())
}

/// The approval webhook's URL, which must be http or https.
fn webhook_uri(url: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("approvals.webhook_url `{url}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => Ok(uri),
        _ => anyhow::bail!("approvals.webhook_url `{url}` must be an http(s) URL"),
    }
}

fn print_first_steps(ctx: &Context, addr: SocketAddr) {
    let dd = ctx.data_dir_flag();
    eprintln!(
        "\nThe store is empty. Next steps:\n\
         \x20 1. Store a provider key (read from stdin or a hidden prompt, never from the command line):\n\
         \x20      seks {dd}secret add openai-main --provider openai\n\
         \x20 2. Mint a token for an agent (printed once):\n\
         \x20      seks {dd}token create --secret openai-main --agent my-agent\n\
         \x20 3. Give the agent the token and this base URL instead of the real key:\n\
         \x20      OpenAI(base_url=\"http://{addr}/api/openai/v1\", api_key=\"<token>\")\n\
         \x20    Other providers live at http://{addr}/api/<provider>/ (anthropic, gemini, groq, github).\n"
    );
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the broker");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
