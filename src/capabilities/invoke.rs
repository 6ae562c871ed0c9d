//! One capability call, whichever way it came in (`POST /v1/capabilities/NAME` or an MCP
//! `tools/call`): the token and its chain's lifetimes and policies, the arguments, the
//! chain's limits, an operator's approval if the capability asks for one, the secret, the
//! backend — and what the audit record says about it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use lettre::transport::smtp::client::Certificate;
use serde_json::{Value, json};

use super::params::{summarise, summarise_for_approval};
use super::trial::Trial;
use super::{ArgumentError, Capability, CapabilitySpec, Catalog, RunError, Validated, valid_name};
use crate::approvals::Summary;
use crate::audit::{AuditRecord, Auditor, Decision};
use crate::keyring::{Keyring, KeyringError, TokenEntry};
use crate::policy::limits::{InFlight, Limited};
use crate::policy::{self, RequestPath};
use crate::providers::{ErrorShape, Provider, Providers};
use crate::proxy::{
    PendingRecord, Proxy, ProxyError, SEKS_ERROR_HEADER, Upstreams, by_root, check_built_graphql,
    check_credential_route, withheld_members,
};
use crate::scrub::{Redactor, Scrubber};

/// What an approval request gives as a capability call's provider.
const CAPABILITY_PROVIDER: &str = "capability";
/// Where capabilities are called (`POST /v1/capabilities/NAME`), also the path policy rules
/// and approval requests see for a call that came over MCP.
pub const CALL_PATH: &str = "/v1/capabilities";
/// Extra time a backend gets past its own timeout to report it, before the call is cut.
const REPORT_GRACE: Duration = Duration::from_secs(2);

/// Why a call was refused or failed; each maps to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The token, its policy, its limits or an operator said no (or the store is down).
    #[error(transparent)]
    Refused(#[from] ProxyError),
    /// No capability has this name.
    #[error("unknown capability `{0}`")]
    Unknown(String),
    /// The capability was redefined while the call waited for approval.
    #[error("capability `{0}` was changed while the call waited for approval; call it again")]
    Changed(String),
    /// The arguments don't fit the capability.
    #[error(transparent)]
    Arguments(#[from] ArgumentError),
    /// The backend refused, failed or timed out.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl CallError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            CallError::Refused(e) => e.status(),
            CallError::Unknown(_) => StatusCode::NOT_FOUND,
            CallError::Changed(_) => StatusCode::CONFLICT,
            CallError::Arguments(ArgumentError::Bad(_)) | CallError::Run(RunError::BadValue(_)) => {
                StatusCode::BAD_REQUEST
            }
            CallError::Arguments(ArgumentError::NotAllowed(_))
            | CallError::Run(RunError::ReadOnly) => StatusCode::FORBIDDEN,
            CallError::Run(RunError::Refused(_) | RunError::Unreachable(_)) => {
                StatusCode::BAD_GATEWAY
            }
            CallError::Run(RunError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            CallError::Run(RunError::Misconfigured(_)) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Refused(e) => e.code(),
            CallError::Unknown(_) => "unknown_capability",
            CallError::Changed(_) => "capability_changed",
            CallError::Arguments(ArgumentError::Bad(_)) | CallError::Run(RunError::BadValue(_)) => {
                "bad_arguments"
            }
            CallError::Arguments(ArgumentError::NotAllowed(_)) => "argument_not_allowed",
            CallError::Run(RunError::ReadOnly) => "read_only",
            CallError::Run(RunError::Refused(_)) => "backend_refused",
            CallError::Run(RunError::Unreachable(_)) => "backend_unreachable",
            CallError::Run(RunError::Timeout(_)) => "backend_timeout",
            CallError::Run(RunError::Misconfigured(_)) => "capability_unavailable",
        }
    }

    /// The error as the calling agent sees it. A capability its token may not call is, to
    /// it, one that doesn't exist: telling the two apart would let an agent probe which
    /// capability names the operator configured (the audit log keeps the real reason).
    pub fn as_seen_by_agent(self) -> CallError {
        match self {
            CallError::Refused(ProxyError::Policy(policy::Denial::Capability(name))) => {
                CallError::Unknown(name)
            }
            other => other,
        }
    }

    /// What the audit log records.
    pub fn decision(&self) -> Decision {
        match self {
            CallError::Refused(e) => e.decision(),
            CallError::Run(
                RunError::Refused(_) | RunError::Unreachable(_) | RunError::Timeout(_),
            ) => Decision::UpstreamError,
            CallError::Run(RunError::Misconfigured(_)) => Decision::Failed,
            _ => Decision::Denied,
        }
    }

    /// What the agent is told. A misconfiguration's detail is the operator's (it is logged).
    fn message(&self) -> String {
        match self {
            CallError::Run(RunError::Misconfigured(_)) => {
                "this capability can't run as configured; the operator can find why in the broker's log"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// Runs capabilities: fetches their secrets and talks to their backends.
pub struct Runner {
    keyring: Arc<Keyring>,
    providers: Providers,
    upstreams: Upstreams,
    /// Extra roots for SMTP TLS (the `[upstream] extra_ca_file`).
    smtp_roots: Vec<Certificate>,
    /// Calls running, by capability name: kept apart from the definitions, which a reload
    /// replaces while calls run.
    in_flight: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

impl Runner {
    /// A runner with secrets from `keyring`, HTTP through `upstreams` to `providers`, and SMTP
    /// trusting the Mozilla roots plus `extra_ca_pem`.
    pub fn new(
        keyring: Arc<Keyring>,
        providers: Providers,
        upstreams: Upstreams,
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        let smtp_roots = match extra_ca_pem {
            Some(pem) => vec![
                Certificate::from_pem(pem)
                    .map_err(|e| format!("the extra CA file can't be used for SMTP: {e}"))?,
            ],
            None => Vec::new(),
        };
        Ok(Runner {
            keyring,
            providers,
            upstreams,
            smtp_roots,
            in_flight: Mutex::default(),
        })
    }

    /// A place among `capability`'s calls running, held until the call ends; refused when
    /// its `max_in_flight` are taken, whatever the callers' own limits.
    fn slot(&self, capability: &Capability) -> Result<Slot, ProxyError> {
        let common = capability.spec.common();
        let max = common.max_in_flight;
        let counter = Arc::clone(
            self.in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(capability.name.clone())
                .or_default(),
        );
        let cap = max.map_or(u32::MAX, NonZeroU32::get);
        match InFlight::take(&counter, cap) {
            Some((held, _)) => Ok(Slot {
                held: Some(held),
                linger: common.timeout,
            }),
            None => Err(ProxyError::Limited(Limited::CapabilityInFlight {
                capability: capability.name.clone(),
                max: cap,
            })),
        }
    }

    /// Run `capability` with checked arguments for `tenant`; the answer is scrubbed of
    /// every secret the broker holds, and an HTTP answer's `withheld` members replaced.
    pub async fn run(
        &self,
        tenant: &str,
        capability: &Capability,
        args: Validated,
        withheld: Option<&[String]>,
    ) -> Result<Value, CallError> {
        let slot = self.slot(capability)?;
        let result = self.run_in_slot(tenant, capability, args, withheld).await;
        slot.release();
        result
    }

    async fn run_in_slot(
        &self,
        tenant: &str,
        capability: &Capability,
        args: Validated,
        withheld: Option<&[String]>,
    ) -> Result<Value, CallError> {
        let common = capability.spec.common();
        let (provider, unlocked) = self
            .keyring
            .named_credential(tenant, common.secret)
            .await
            .map_err(|e| match e {
                KeyringError::SecretMissing(_) => CallError::Run(RunError::Misconfigured(format!(
                    "capability `{}`: secret `{}` does not exist or can't be decrypted",
                    capability.name, common.secret
                ))),
                other => {
                    tracing::error!(error = %other, "store lookup failed; refusing the call");
                    CallError::Refused(ProxyError::StoreUnavailable)
                }
            })?;
        // The secret's provider is bound into its ciphertext: a capability can only use a
        // secret stored for its kind (or its HTTP provider).
        if provider != capability.spec.secret_provider() {
            return Err(RunError::Misconfigured(format!(
                "capability `{}`: secret `{}` belongs to `{provider}`, not `{}`",
                capability.name,
                common.secret,
                capability.spec.secret_provider()
            ))
            .into());
        }
        let secret = &unlocked.secret;
        let work = async {
            match (&capability.spec, args) {
                (CapabilitySpec::Email(s), Validated::Email(message)) => {
                    s.send(message, secret, &self.smtp_roots, common.timeout)
                        .await
                }
                (CapabilitySpec::Sql(s), Validated::Values(values)) => {
                    s.run(secret, &values, common.timeout).await
                }
                (CapabilitySpec::Http(s), Validated::Values(values)) => {
                    s.send(
                        &self.providers,
                        &self.upstreams,
                        &values,
                        secret,
                        &unlocked.scrubber,
                        withheld,
                    )
                    .await
                }
                _ => Err(RunError::Misconfigured(
                    "arguments of another kind of capability".to_owned(),
                )),
            }
        };
        let answer = tokio::time::timeout(common.timeout + REPORT_GRACE, work)
            .await
            .map_err(|_| RunError::Timeout(common.timeout))?
            .inspect_err(|e| {
                if let RunError::Misconfigured(why) = e {
                    tracing::error!(capability = %capability.name, "capability can't run: {why}");
                }
            })?;
        Ok(scrubbed(&unlocked.scrubber, answer)?)
    }
}

/// A call's place among its capability's calls running. A call abandoned midway (its agent
/// left) keeps it for one more `timeout` once dropped: the backend goes on with what it was
/// sent until its own timeout stops it, and its connection is still taken meanwhile.
struct Slot {
    held: Option<InFlight>,
    linger: Duration,
}

impl Slot {
    /// The call ended: the backend is done with it.
    fn release(mut self) {
        self.held = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(held) = self.held.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let linger = self.linger;
            runtime.spawn(async move {
                tokio::time::sleep(linger).await;
                drop(held);
            });
        }
    }
}

/// `value` with every secret masked (a database row or a mail server's answer could hold
/// one); refused if a secret sits where a mask can't go (a digits-only secret as a number).
fn scrubbed(scrubber: &Scrubber, value: Value) -> Result<Value, RunError> {
    let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
    if !scrubber.scrub_all(&mut bytes) {
        return Ok(value);
    }
    // A mask inside a string keeps the JSON whole; one in a number or a key's syntax breaks it.
    serde_json::from_slice(&bytes).map_err(|_| {
        RunError::Refused(
            "the answer held a secret outside a string, where it can't be masked, so it is \
             withheld"
                .to_owned(),
        )
    })
}

/// The request an HTTP capability makes to its provider, as the provider's rules read it.
struct Upstream<'a> {
    provider: &'a Provider,
    path: RequestPath,
    /// The URL's query (empty for none).
    query: String,
    /// The JSON body, if the template has one.
    body: Option<Bytes>,
}

/// The capabilities served to agents, and the checks every call goes through.
pub struct Capabilities {
    /// Their definitions.
    pub catalog: Catalog,
    /// What runs them.
    pub runner: Runner,
    /// The proxy, for its token checks, limits and approvals.
    proxy: Arc<Proxy>,
    /// Masks secrets in error messages that quote a backend.
    redactor: Arc<Redactor>,
}

impl Capabilities {
    /// Capabilities from `catalog`, run by `runner`, held to the rules `proxy` applies.
    pub fn new(
        catalog: Catalog,
        runner: Runner,
        proxy: Arc<Proxy>,
        redactor: Arc<Redactor>,
    ) -> Self {
        Capabilities {
            catalog,
            runner,
            proxy,
            redactor,
        }
    }

    /// The proxy whose rules calls follow.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// An operator's trial run of these capabilities, recorded in `auditor`.
    pub fn trial<'a>(&'a self, auditor: &'a Auditor) -> Trial<'a> {
        Trial {
            catalog: &self.catalog,
            runner: &self.runner,
            auditor,
            redactor: &self.redactor,
        }
    }

    /// The capabilities `entry` may invoke now (none once it is revoked or expired).
    pub async fn allowed_for(&self, entry: &TokenEntry) -> Result<Vec<Arc<Capability>>, CallError> {
        let all = self.catalog.all().await.map_err(store_down)?;
        Ok(all
            .into_iter()
            .filter(|c| self.check(entry, &c.name).is_ok())
            .collect())
    }

    /// Check that the token's chain may call `name`; `Ok` names the policy rule, if any,
    /// that holds the call for approval (`require_approval = ["POST /v1/capabilities/NAME"]`).
    fn check(&self, entry: &TokenEntry, name: &str) -> Result<Option<String>, ProxyError> {
        let mut hold = None;
        self.proxy.check_call(entry, |specs| {
            let (root, derived) = by_root(specs);
            policy::check_capability(name, &root, &derived)?;
            let path = RequestPath::new(&Method::POST, &format!("{CALL_PATH}/{name}"));
            hold = specs
                .iter()
                .find_map(|(_, s)| s.require_approval.iter().find(|r| r.catches(&path)))
                .map(ToString::to_string);
            Ok(())
        })?;
        Ok(hold)
    }

    /// The provider request an HTTP capability makes with `validated`, as the provider's
    /// credential routes and GraphQL endpoints read it; `None` for other kinds.
    fn upstream_request<'a>(
        &'a self,
        capability: &Capability,
        validated: &Validated,
    ) -> Result<Option<Upstream<'a>>, CallError> {
        let (CapabilitySpec::Http(s), Validated::Values(values)) = (&capability.spec, validated)
        else {
            return Ok(None);
        };
        // A provider that is gone is refused by the send itself.
        let Some(provider) = self.runner.providers.get(&s.provider) else {
            return Ok(None);
        };
        let path = s.path_for(values).map_err(ArgumentError::Bad)?;
        let (query, body) = s.query_and_body(values)?;
        Ok(Some(Upstream {
            provider,
            path: RequestPath::new(&s.method()?, &path),
            query,
            body,
        }))
    }

    /// Refuse a call whose provider request is one of the provider's credential routes, or
    /// names a credential field at its GraphQL endpoint, unless the token's chain may mint
    /// credentials, as for a proxied request: the answer, a credential that works without the
    /// broker, would reach the agent. `Ok` names the members withheld from the answer for the
    /// same reason, as the proxy withholds them.
    fn check_route(
        &self,
        entry: &TokenEntry,
        upstream: Option<&Upstream<'_>>,
    ) -> Result<Option<Arc<[String]>>, ProxyError> {
        let Some(Upstream {
            provider,
            path,
            query,
            body,
        }) = upstream
        else {
            return Ok(None);
        };
        let mut graphql = Ok(());
        let mut withheld = None;
        self.proxy.check_call(entry, |specs| {
            check_credential_route(provider, path, specs)?;
            graphql = check_built_graphql(provider, path, Some(query), body.as_deref(), specs);
            withheld = withheld_members(provider, path, specs);
            Ok(())
        })?;
        graphql.map(|()| withheld)
    }

    /// Call capability `name` with `args` for the token `entry`; `record` learns the
    /// capability, a summary of the arguments and the outcome (not the status).
    pub async fn call(
        &self,
        entry: &TokenEntry,
        name: &str,
        args: &Value,
        record: &PendingRecord,
    ) -> Result<Value, CallError> {
        // Whatever an agent sent as a name is recorded only if a capability could have it.
        if !valid_name(name) {
            return Err(CallError::Unknown(name.to_owned()));
        }
        record.update(|r| {
            r.capability = Some(name.to_owned());
            r.arguments = Some(summarise(args));
        });
        let mut approved = false;
        let result = self
            .call_inner(entry, name, args, record, &mut approved)
            .await;
        record.update(|r| note_outcome(r, &result, approved));
        result
    }

    async fn call_inner(
        &self,
        entry: &TokenEntry,
        name: &str,
        args: &Value,
        record: &PendingRecord,
        approved: &mut bool,
    ) -> Result<Value, CallError> {
        // Lifetimes first, so a revoked token learns only that.
        self.proxy.check_call(entry, |_| Ok(()))?;
        let capability = find(&self.catalog, name).await?;
        record.update(|r| r.provider = capability.spec.provider().map(str::to_owned));
        let policy_hold = self.check(entry, name)?;
        let validated = capability.validate(args)?;
        let upstream = self.upstream_request(&capability, &validated)?;
        let mut withheld = self.check_route(entry, upstream.as_ref())?;
        let common = capability.spec.common();
        let rule = match policy_hold {
            Some(rule) => Some(rule),
            None => common
                .require_approval
                .then(|| format!("require_approval = true (capability `{name}`)")),
        };
        let hold = rule.map(|rule| {
            Summary::new(
                &entry.record.agent,
                &entry.record.id,
                CAPABILITY_PROVIDER,
                "POST",
                &format!("{CALL_PATH}/{name}"),
                None,
                rule,
            )
            // Stored and shown to people: agent tokens in it cut to a prefix, like in logs.
            .with_arguments(&self.redacted(&summarise_for_approval(args)))
        });
        let held = hold.is_some();
        // Held until the call ends: a concurrency slot is free again only then.
        // A policy narrowed while the call waited for approval decides over the approval.
        let recheck = |current: &TokenEntry| {
            self.check(current, name)?;
            withheld = self.check_route(current, upstream.as_ref())?;
            Ok(())
        };
        let _admission = self.proxy.admit_call(entry, hold, recheck).await?;
        if held && find(&self.catalog, name).await?.spec != capability.spec {
            // The operator approved a call of the definition there was; a new one may send
            // something else, somewhere else.
            return Err(CallError::Changed(name.to_owned()));
        }
        *approved = held;
        self.proxy.note_use(&entry.record.id);
        tracing::info!(capability = %name, token_id = %entry.record.id, "capability called");
        self.runner
            .run(
                &entry.record.tenant,
                &capability,
                validated,
                withheld.as_deref(),
            )
            .await
    }

    /// The error as `{"error": {"message", "type", "code"}}` with its status, scrubbed of
    /// every secret and marked with `x-seks-error`.
    pub fn error_response(&self, error: CallError) -> Response {
        let error = error.as_seen_by_agent();
        if let CallError::Refused(e) = error {
            return e.into_response(ErrorShape::OpenAi);
        }
        let (status, code) = (error.status(), error.code());
        let message = self.shown(&error);
        let (content_type, body) = ErrorShape::OpenAi.body(status, code, &message);
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(SEKS_ERROR_HEADER, HeaderValue::from_static(code));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// The error's message as the agent may see it: scrubbed of every secret.
    pub fn shown(&self, error: &CallError) -> String {
        self.redacted(&error.message())
    }

    /// `text` with every secret masked and agent tokens cut to a short prefix.
    fn redacted(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.redactor.redact_text(text.as_bytes())).into_owned()
    }

    /// A tool's description of a capability, for listings (REST and MCP).
    pub fn describe(capability: &Capability) -> Value {
        json!({
            "name": capability.name,
            "description": capability.spec.common().description,
            "input_schema": capability.schema,
        })
    }
}

/// The capability named `name`, or why there is none to call.
pub(super) async fn find(catalog: &Catalog, name: &str) -> Result<Arc<Capability>, CallError> {
    catalog
        .get(name)
        .await
        .map_err(store_down)?
        .ok_or_else(|| CallError::Unknown(name.to_owned()))
}

/// The refusal for a store that can't list capabilities; the cause goes to the log.
fn store_down(e: crate::store::StoreError) -> CallError {
    tracing::error!(error = %e, "capabilities could not be read from the store");
    CallError::Refused(ProxyError::StoreUnavailable)
}

/// Fill a record's outcome (decision, error code and reason) from a call's result.
pub(super) fn note_outcome(
    record: &mut AuditRecord,
    result: &Result<Value, CallError>,
    approved: bool,
) {
    match result {
        Ok(_) => {
            record.decision = if approved {
                Decision::Approved
            } else {
                Decision::Allowed
            };
            (record.error, record.reason) = (None, None);
        }
        Err(e) => {
            record.decision = e.decision();
            record.error = Some(e.code().to_owned());
            record.reason = Some(e.message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_holding_a_secret_is_masked_or_withheld_never_emptied() {
        let scrubber = Scrubber::new([b"4111111111111111".as_slice()]).unwrap();
        let clean = json!({"rows": [{"id": 1}]});
        assert_eq!(scrubbed(&scrubber, clean.clone()).unwrap(), clean);
        let masked = scrubbed(&scrubber, json!({"note": "card 4111111111111111"})).unwrap();
        assert_eq!(masked["note"], "card ****************");
        let as_number = scrubbed(&scrubber, json!({"card": 4111111111111111_u64}));
        assert!(
            matches!(as_number, Err(RunError::Refused(ref why)) if why.contains("withheld")),
            "{as_number:?}"
        );
    }
}
