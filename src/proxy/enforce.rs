//! Policy on the request path: the token chain's lifetimes and rules, the request body when
//! a rule needs it, approval holds, and rate, concurrency and budget admission.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, header};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::{ProxyError, Seen, keyring_error, websocket};
use crate::approvals::{Approvals, MAX_PENDING_PER_TOKEN, NotApproved, Summary};
use crate::clock;
use crate::keyring::{Keyring, TokenEntry};
use crate::policy::limits::{self, Admission, LimitSet, Limits};
use crate::policy::{self, Denial, PolicySpec, RequestFacts, RequestPath, Verdict, graphql};
use crate::providers::{Provider, UnreadableModel};
use crate::sigv4::SigError;
use crate::sigv4::replay::{Claim, REUSE_WINDOW};

/// The request body as it will be forwarded: streamed untouched, or read for policy.
pub enum ForwardBody {
    /// Not read by the broker.
    Streamed(Body),
    /// Read (and possibly amended) for policy; sent as is.
    Buffered(Bytes),
}

/// A request that passed policy.
pub struct Admitted {
    /// What to send upstream.
    pub body: ForwardBody,
    /// Slots and charges held until the response ends; `None` when no link has limits.
    pub admission: Option<Admission>,
    /// JSON members to withhold from the answer (see [`withheld_members`]).
    pub withheld: Option<Arc<[String]>>,
}

/// Applies policy to requests: holds the counters and the approval queue.
pub struct Enforcer {
    counters: Arc<Limits>,
    approvals: Approvals,
    /// Where a held request's token is looked up again once it is approved.
    keyring: Arc<Keyring>,
    /// Largest body read for a rule.
    policy_body_limit: usize,
    /// Largest body held for approval (the forwarding limit).
    forward_body_limit: usize,
}

/// Every policy of every link, nearest first; a policy that can't be read refuses the request.
fn specs(entry: &TokenEntry) -> Result<Vec<(&TokenEntry, &PolicySpec)>, ProxyError> {
    let mut out = Vec::new();
    for link in entry.chain() {
        for policy in &link.policies {
            let spec = policy
                .as_ref()
                .map_err(|why| ProxyError::PolicyUnavailable(why.clone()))?;
            out.push((link, spec.as_ref()));
        }
    }
    Ok(out)
}

/// The policies of a chain split into the root token's (the one the operator minted) and its
/// descendants', for what only a root policy can grant.
pub(crate) fn by_root<'a>(
    specs: &[(&TokenEntry, &'a PolicySpec)],
) -> (Vec<&'a PolicySpec>, Vec<&'a PolicySpec>) {
    let (root, derived): (Vec<_>, Vec<_>) =
        specs.iter().partition(|(link, _)| link.parent.is_none());
    let specs_of = |links: Vec<&(&TokenEntry, &'a PolicySpec)>| {
        links.into_iter().map(|(_, spec)| *spec).collect()
    };
    (specs_of(root), specs_of(derived))
}

/// Refuse a request to one of the provider's credential routes unless the chain may mint
/// credentials: whatever the route answers would work without the broker.
pub(crate) fn check_credential_route(
    provider: &Provider,
    path: &RequestPath,
    specs: &[(&TokenEntry, &PolicySpec)],
) -> Result<(), Denial> {
    match provider.credential_routes.iter().find(|r| r.catches(path)) {
        Some(route) => {
            let (root, derived) = by_root(specs);
            policy::check_credential_route(route, path, &root, &derived)
        }
        None => Ok(()),
    }
}

/// The provider's credential members, when the request's answer may hold them and the chain
/// may not mint credentials: they are withheld from the answer.
pub(crate) fn withheld_members(
    provider: &Provider,
    path: &RequestPath,
    specs: &[(&TokenEntry, &PolicySpec)],
) -> Option<Arc<[String]>> {
    let withheld = provider.answers_with_members(path) && {
        let (root, derived) = by_root(specs);
        !policy::may_mint_credentials(&root, &derived)
    };
    withheld.then(|| Arc::clone(&provider.credential_members))
}

/// Whether a request's GraphQL operations must be read before it goes on: it is for one of the
/// provider's GraphQL endpoints, and the chain may not mint credentials.
fn reads_graphql(
    provider: &Provider,
    path: &RequestPath,
    specs: &[(&TokenEntry, &PolicySpec)],
) -> bool {
    provider.reads_graphql(path) && {
        let (root, derived) = by_root(specs);
        !policy::may_mint_credentials(&root, &derived)
    }
}

/// What a request to a GraphQL endpoint must be for its operations to be read.
const UNREAD_GRAPHQL: &str = "requests to this GraphQL endpoint must carry their operations as \
     GraphQL over JSON (a `{\"query\": …}` object or an array of them, declared as JSON, \
     or `?query=`), so the broker can check them for fields that hand out credentials";

/// Refuse a GraphQL request that names one of the provider's credential fields, unless the
/// chain may mint credentials. Its operations are in the URL's query and in the body, which
/// must then be GraphQL over JSON: anything else could carry an operation unread.
fn check_graphql(
    provider: &Provider,
    parts: &Parts,
    path: &RequestPath,
    specs: &[(&TokenEntry, &PolicySpec)],
    body: &ForwardBody,
) -> Result<(), ProxyError> {
    if !reads_graphql(provider, path, specs) {
        return Ok(());
    }
    let ForwardBody::Buffered(bytes) = body else {
        return Err(ProxyError::BadBody(UNREAD_GRAPHQL));
    };
    graphql_names(
        provider,
        path,
        parts.uri.query(),
        declares_json(&parts.headers),
        bytes,
    )
}

/// Check a request the broker builds itself (an HTTP capability's: its URL `query` and JSON
/// `body`) as [`check_graphql`] checks a proxied one.
pub(crate) fn check_built_graphql(
    provider: &Provider,
    path: &RequestPath,
    query: Option<&str>,
    body: Option<&[u8]>,
    specs: &[(&TokenEntry, &PolicySpec)],
) -> Result<(), ProxyError> {
    if !reads_graphql(provider, path, specs) {
        return Ok(());
    }
    graphql_names(
        provider,
        path,
        query,
        body.is_some(),
        body.unwrap_or_default(),
    )
}

/// Refuse a request whose URL `query` or body (`json`: declared as JSON) names one of the
/// provider's credential fields.
fn graphql_names(
    provider: &Provider,
    path: &RequestPath,
    query: Option<&str>,
    json: bool,
    bytes: &[u8],
) -> Result<(), ProxyError> {
    let fields = &provider.credential_fields;
    // Rails reads `_json`, or `query` from the URL when the body has none, so every
    // parameter is looked at, not just `query`.
    let query = url::form_urlencoded::parse(query.unwrap_or("").as_bytes());
    let mut named = None;
    let mut in_url = false;
    for (key, value) in query {
        in_url |= key == "query";
        named = named
            .or_else(|| graphql::text_names(&key, fields))
            .or_else(|| graphql::text_names(&value, fields));
    }
    let blank = bytes.iter().all(u8::is_ascii_whitespace);
    if !(blank && in_url) {
        if !json {
            return Err(ProxyError::BadBody(UNREAD_GRAPHQL));
        }
        let in_body =
            graphql::body_names(bytes, fields).map_err(|_| ProxyError::BadBody(UNREAD_GRAPHQL))?;
        named = named.or(in_body);
    }
    match named {
        Some(field) => Err(ProxyError::Policy(Denial::MintsCredentialField {
            method: path.method().to_string(),
            path: path.path().to_owned(),
            field: field.to_owned(),
        })),
        None => Ok(()),
    }
}

impl Enforcer {
    /// Policy enforcement over these counters and approvals, reading bodies up to the limits;
    /// approved requests' tokens are checked again in `keyring`.
    pub fn new(
        counters: Arc<Limits>,
        approvals: Approvals,
        keyring: Arc<Keyring>,
        policy_body_limit: usize,
        forward_body_limit: usize,
    ) -> Self {
        Enforcer {
            counters,
            approvals,
            keyring,
            // A body read for policy goes upstream as read, past the streamed body's limit.
            policy_body_limit: policy_body_limit.min(forward_body_limit),
            forward_body_limit,
        }
    }

    /// Check a request against its token's whole chain and admit it, or say why not.
    pub async fn admit(
        &self,
        entry: &TokenEntry,
        provider: &Provider,
        parts: &Parts,
        rest: &str,
        body: Body,
        seen: &mut Seen,
    ) -> Result<Admitted, ProxyError> {
        let now = clock::now();
        check_lifetimes(entry, now)?;
        let specs = specs(entry)?;
        let path = RequestPath::new(&parts.method, rest);
        check_credential_route(provider, &path, &specs).map_err(ProxyError::Policy)?;
        // Only requests whose GraphQL operations must be checked pay for reading the body here.
        let body = if reads_graphql(provider, &path, &specs) {
            ForwardBody::Buffered(read(body, parts, self.policy_body_limit).await?)
        } else {
            ForwardBody::Streamed(body)
        };
        check_graphql(provider, parts, &path, &specs, &body)?;
        let mut withheld = withheld_members(provider, &path, &specs);
        if specs.is_empty() {
            return Ok(Admitted {
                body,
                admission: None,
                withheld,
            });
        }
        let (checks_models, checks_body) = reads_body_for(provider, &specs);
        let count_stream_usage = provider.stream_usage_opt_in
            && parts.method == Method::POST
            && specs.iter().any(|(_, s)| s.daily_tokens.is_some());
        let sources = source_paths(provider, parts)?;
        // A held request is sent later, so its whole body waits with it.
        let may_hold = specs.iter().any(|(_, s)| {
            s.require_approval
                .iter()
                .any(|r| std::iter::once(&path).chain(&sources).any(|p| r.catches(p)))
        });
        let read_limit = if may_hold {
            Some(self.forward_body_limit)
        } else if checks_models || checks_body || count_stream_usage {
            Some(self.policy_body_limit)
        } else {
            None
        };
        let mut body = match (read_limit, body) {
            (Some(limit), ForwardBody::Streamed(body)) => {
                ForwardBody::Buffered(read(body, parts, limit).await?)
            }
            (_, body) => body,
        };
        let (json, models) = request_facts(provider, parts, &path, &specs, &body)?;
        if !models.is_empty() {
            seen.model = Some(models.join(", "));
        }
        let models: Vec<&str> = models.iter().map(String::as_str).collect();
        let facts = RequestFacts {
            path: &path,
            models: &models,
            body: json.as_ref(),
        };
        let hold_for = judge(&specs, &facts, &sources)?;
        if count_stream_usage && let Some(amended) = ask_for_stream_usage(json.as_ref()) {
            body = ForwardBody::Buffered(amended);
        }
        // Limits are taken before a hold, so held requests count against rate and
        // concurrency like any other.
        let admission = self.take_limits(entry, &specs, now).await?;
        if let Some(rule) = hold_for {
            // The operator sees what a copy reads, not only where it writes.
            let shown_path = std::iter::once(path.path().to_owned())
                .chain(sources.iter().map(|s| format!("reading {}", s.path())))
                .collect::<Vec<_>>()
                .join(", ");
            let summary = Summary::new(
                &entry.record.agent,
                &entry.record.id,
                &provider.name,
                parts.method.as_str(),
                &shown_path,
                (!models.is_empty()).then(|| models.join(", ")).as_deref(),
                rule,
            );
            let current = self.hold(entry, summary).await?;
            // The operator may have narrowed the policy while the request waited: an approval
            // lets through what the policy allows now, not what it allowed on arrival.
            let specs = self::specs(&current)?;
            check_credential_route(provider, &path, &specs).map_err(ProxyError::Policy)?;
            check_graphql(provider, parts, &path, &specs, &body)?;
            // Read again under the policies as they are now: one that checks what the request
            // hides (a model it names unreadably, a body that isn't JSON) refuses it.
            let (json, models) = request_facts(provider, parts, &path, &specs, &body)?;
            let models: Vec<&str> = models.iter().map(String::as_str).collect();
            let facts = RequestFacts {
                path: &path,
                models: &models,
                body: json.as_ref(),
            };
            judge(&specs, &facts, &sources)?;
            withheld = withheld_members(provider, &path, &specs);
            seen.approved = true;
        }
        Ok(Admitted {
            body,
            admission,
            withheld,
        })
    }

    /// Refuse a SigV4 signature a replica sharing the store first saw longer ago than a
    /// signature may be reused (a request captured on its way to one replica, sent to
    /// another).
    pub async fn claim_signature(&self, claim: &Claim) -> Result<(), ProxyError> {
        match self.counters.claim_signature(claim).await {
            Ok(Some(age)) if age > REUSE_WINDOW => Err(SigError::Replayed.into()),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "a signature could not be claimed; refusing the request");
                Err(ProxyError::StoreUnavailable)
            }
        }
    }

    /// Check a call the broker makes itself (a capability) against the token's chain: every
    /// link alive, every policy readable, and `allowed` satisfied by them.
    pub fn check_call(
        &self,
        entry: &TokenEntry,
        allowed: impl FnOnce(&[(&TokenEntry, &PolicySpec)]) -> Result<(), Denial>,
    ) -> Result<(), ProxyError> {
        check_lifetimes(entry, clock::now())?;
        allowed(&specs(entry)?).map_err(ProxyError::Policy)
    }

    /// Admit a checked call: the chain's rate, concurrency and daily request limits are taken
    /// as for a proxied request, then, if `hold` says so, it waits for an operator, and
    /// `recheck` must pass on the token chain as it is once approved.
    pub async fn admit_call(
        &self,
        entry: &TokenEntry,
        hold: Option<Summary>,
        recheck: impl FnOnce(&TokenEntry) -> Result<(), ProxyError>,
    ) -> Result<Option<Admission>, ProxyError> {
        let specs = specs(entry)?;
        let admission = self.take_limits(entry, &specs, clock::now()).await?;
        if let Some(summary) = hold {
            recheck(&self.hold(entry, summary).await?)?;
        }
        Ok(admission)
    }

    /// Hold a request until an operator decides; `Ok` means approved and the token chain
    /// still alive, and gives the chain as it is now.
    async fn hold(&self, entry: &TokenEntry, summary: Summary) -> Result<TokenEntry, ProxyError> {
        self.approvals
            .hold(&entry.record.tenant, &entry.root().record.id, summary)
            .await
            .map_err(|e| match e {
                NotApproved::Denied { .. } => ProxyError::ApprovalDenied(e.to_string()),
                NotApproved::TimedOut(_) => ProxyError::ApprovalTimedOut(e.to_string()),
                NotApproved::TooManyPending => {
                    ProxyError::Limited(limits::Limited::PendingApprovals {
                        max: MAX_PENDING_PER_TOKEN,
                    })
                }
                NotApproved::Store(e) => {
                    tracing::error!(error = %e, "approval could not be recorded; refusing the request");
                    ProxyError::StoreUnavailable
                }
            })?;
        // The hold may have lasted minutes, and the entry was read before it: a token (or an
        // ancestor) revoked or expired meanwhile must not be used on the strength of an
        // approval, so the chain is read again from the store.
        let current = self
            .keyring
            .current(&entry.record)
            .await
            .map_err(keyring_error)?;
        check_lifetimes(&current, clock::now())?;
        Ok(current)
    }

    /// Take a slot and a charge from every token of the chain that has limits: one counter
    /// set per token, under the strictest of its policies' limits.
    async fn take_limits(
        &self,
        entry: &TokenEntry,
        specs: &[(&TokenEntry, &PolicySpec)],
        now: i64,
    ) -> Result<Option<Admission>, ProxyError> {
        let mut links = Vec::new();
        for link in entry.chain() {
            let limits = LimitSet::strictest(
                specs
                    .iter()
                    .filter(|(owner, _)| owner.record.id == link.record.id)
                    .map(|(_, spec)| *spec),
            );
            if limits.is_empty() {
                continue;
            }
            let counters = self.counters.of(&link.record.id, now).await.map_err(|e| {
                tracing::error!(error = %e, "usage counters could not be loaded; refusing the request");
                ProxyError::StoreUnavailable
            })?;
            links.push((counters, limits));
        }
        if links.is_empty() {
            return Ok(None);
        }
        let counting = self.counters.lease(&links).await.map_err(|e| {
            tracing::error!(error = %e, "limits could not be leased; refusing the request");
            ProxyError::StoreUnavailable
        })?;
        self.counters
            .admit(&links, counting, clock::now())
            .map(Some)
            .map_err(ProxyError::Limited)
    }
}

/// Whether `specs` read the request body: for a model list where the provider names the
/// model there, and for body rules.
fn reads_body_for(provider: &Provider, specs: &[(&TokenEntry, &PolicySpec)]) -> (bool, bool) {
    let checks_models =
        provider.model_in.reads_body() && specs.iter().any(|(_, s)| s.models.is_some());
    let checks_body = specs.iter().any(|(_, s)| !s.body.is_empty());
    (checks_models, checks_body)
}

/// The request's JSON body and the models it names, as `specs` must see them; refused when
/// they check something the request could carry unread.
fn request_facts(
    provider: &Provider,
    parts: &Parts,
    path: &RequestPath,
    specs: &[(&TokenEntry, &PolicySpec)],
    body: &ForwardBody,
) -> Result<(Option<Value>, Vec<String>), ProxyError> {
    // A model that can't be read from the body would slip past `models`, so a body that
    // isn't JSON, or names its model oddly, is refused whenever a model list applies.
    let (checks_models, checks_body) = reads_body_for(provider, specs);
    // A session's messages are relayed unread, so one could carry what a body rule
    // refuses in a request body. Applying the rules to each message instead would check
    // messages of another shape than the one the rules were written for (`required`
    // would refuse every other message), so such a token opens no session at all.
    if checks_body && websocket::is_upgrade(&parts.headers) {
        return Err(ProxyError::BadBody(
            "the token's policy checks fields of the request body, which a WebSocket \
             session's messages would carry unchecked, so it can't open one",
        ));
    }
    let json = match body {
        ForwardBody::Buffered(bytes) => parse_json(bytes, checks_models || checks_body)?,
        ForwardBody::Streamed(_) => None,
    };
    // An upstream reads a body by its declared type: valid JSON declared as a form
    // (`{"channel":"C_OK","x":"&channel=C_EVIL&"}`) would be checked as one request and
    // carried out as another.
    if (checks_models || checks_body) && json.is_some() && !declares_json(&parts.headers) {
        return Err(ProxyError::BadBody(
            "the token's policy reads the request body as JSON, so its Content-Type must \
             be JSON (or absent)",
        ));
    }
    // Slack, Telegram and Stripe read arguments from the query string as well as the body,
    // so a field a body rule checks could be given there instead, unchecked.
    if checks_body && names_a_checked_field(specs, parts.uri.query()) {
        return Err(ProxyError::BadBody(
            "the token's policy checks a field of the request body, which may not also be \
             given in the query string",
        ));
    }
    // OpenAI's Realtime API names its model in the query (`/v1/realtime?model=…`), where a
    // WebSocket handshake has no body to name it in.
    let in_query = if provider.model_in.reads_body() {
        query_models(parts.uri.query())
    } else {
        Vec::new()
    };
    let mut models: Vec<String> = match provider.model_in.find(path.path(), json.as_ref()) {
        Ok(models) => models.into_iter().map(str::to_owned).collect(),
        Err(UnreadableModel) if checks_models => {
            return Err(ProxyError::BadBody(
                "the token's policy checks the model, so `model` must be a string",
            ));
        }
        Err(UnreadableModel) => Vec::new(),
    };
    // A WebSocket session may name its model in a message (Gemini's Live API does, in its
    // first), which the broker relays unread: under a model list, the handshake must, where
    // the upstream reads it (not in a body, and not in a query the upstream ignores).
    if checks_models
        && websocket::is_upgrade(&parts.headers)
        && (in_query.is_empty() || !provider.model_in.session_model_in_query())
    {
        return Err(ProxyError::BadBody(
            "the token's policy checks the model, so a WebSocket session must name it in \
             the URL (`?model=`) of an API that takes it from there (OpenAI-style realtime \
             APIs do, Gemini's Live API doesn't)",
        ));
    }
    models.extend(in_query);
    Ok((json, models))
}

/// Judge a request, and each path it reads besides its own (`sources`), by every policy of
/// the chain; the first rule that holds it for approval, if any.
fn judge(
    specs: &[(&TokenEntry, &PolicySpec)],
    facts: &RequestFacts<'_>,
    sources: &[RequestPath],
) -> Result<Option<String>, ProxyError> {
    let mut hold_for = None;
    for (_, spec) in specs {
        let verdicts = std::iter::once(policy::check_request(spec, facts)).chain(
            sources
                .iter()
                .map(|source| policy::check_path(spec, source)),
        );
        for verdict in verdicts {
            if let Verdict::Approve(rule) = verdict.map_err(ProxyError::Policy)? {
                hold_for.get_or_insert(rule);
            }
        }
    }
    Ok(hold_for)
}

/// The paths a request reads besides its own, named in its provider's `source_headers`
/// (S3's `x-amz-copy-source: bucket/key?versionId=…`), as `GET`s, checked as request paths
/// are. An S3 access point's ARN names no path a policy could judge, so it is refused.
fn source_paths(provider: &Provider, parts: &Parts) -> Result<Vec<RequestPath>, ProxyError> {
    const UNJUDGED: &str = "a copy source must be /bucket/key, which the token's policy judges";
    let mut paths = Vec::new();
    for name in &provider.source_headers {
        for value in parts.headers.get_all(name) {
            let text = value.to_str().map_err(|_| ProxyError::BadPath(UNJUDGED))?;
            let (raw, _version) = text.split_once('?').unwrap_or((text, ""));
            let raw = format!("/{}", raw.strip_prefix('/').unwrap_or(raw));
            let bucket = raw[1..].split('/').next().unwrap_or_default();
            if bucket.is_empty() || bucket.contains(':') || bucket.contains('%') {
                return Err(ProxyError::BadPath(UNJUDGED));
            }
            super::target::validate(&raw, provider.encoded_slashes).map_err(ProxyError::BadPath)?;
            paths.push(RequestPath::new(&Method::GET, &raw));
        }
    }
    Ok(paths)
}

/// Check that the token and each of its ancestors is alive.
pub(super) fn check_lifetimes(entry: &TokenEntry, now: i64) -> Result<(), ProxyError> {
    for link in entry.chain() {
        let own = link.record.id == entry.record.id;
        policy::check_lifetime(&link.record, now).map_err(|d| match d {
            Denial::Revoked(at) if own => ProxyError::Revoked(format!("at {}", clock::format(at))),
            Denial::Expired(at) if own => ProxyError::Expired(format!("at {}", clock::format(at))),
            Denial::Revoked(_) => ProxyError::Revoked("with its parent token".to_owned()),
            _ => ProxyError::Expired("with its parent token".to_owned()),
        })?;
    }
    Ok(())
}

/// Whether a query parameter names the top-level field of a body rule's pointer: `channel`
/// for `/channel`, or, as forms spell nesting, `items[0]` or `items.0` for `/items/0/price`.
fn names_a_checked_field(specs: &[(&TokenEntry, &PolicySpec)], query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    let fields: Vec<String> = specs
        .iter()
        .flat_map(|(_, spec)| &spec.body)
        .filter_map(|rule| {
            let first = rule.pointer.strip_prefix('/')?.split('/').next()?;
            // JSON pointer escapes: `~1` is `/`, `~0` is `~`.
            (!first.is_empty()).then(|| first.replace("~1", "/").replace("~0", "~"))
        })
        .collect();
    url::form_urlencoded::parse(query.as_bytes()).any(|(key, _)| {
        fields.iter().any(|field| {
            key.strip_prefix(field.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['[', '.']))
        })
    })
}

/// The values of a query string's `model` parameters, decoded.
fn query_models(query: Option<&str>) -> Vec<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(key, _)| key == "model")
        .map(|(_, value)| value.into_owned())
        .collect()
}

/// Read a body up to `limit` bytes.
async fn read(body: Body, parts: &Parts, limit: usize) -> Result<Bytes, ProxyError> {
    if parts.headers.contains_key(header::CONTENT_ENCODING) {
        return Err(ProxyError::BadBody(
            "a compressed request body can't be checked against the token's policy",
        ));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(ProxyError::unreadable_body(e.as_ref(), limit)),
    }
}

/// Whether a body is declared as JSON (`application/json`, `application/…+json`) or not
/// declared at all; a repeated Content-Type is not, since which one counts is a guess.
fn declares_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (None, _) => true,
        (Some(value), None) => value.to_str().is_ok_and(|value| {
            let essence = value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        }),
        _ => false,
    }
}

/// The body as JSON; an empty body is none, and a non-JSON one is refused only when a body
/// rule needs to read it.
fn parse_json(bytes: &Bytes, required: bool) -> Result<Option<Value>, ProxyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice(bytes) {
        Ok(json) => Ok(Some(json)),
        Err(_) if required => Err(ProxyError::BadBody(
            "the token's policy checks the request body, which must be JSON",
        )),
        Err(_) => Ok(None),
    }
}

/// For a streaming OpenAI-style request, ask for the usage report so a token budget can be
/// charged (`stream_options.include_usage`); `None` if nothing needs to change.
fn ask_for_stream_usage(json: Option<&Value>) -> Option<Bytes> {
    let mut json = json?.clone();
    if json.get("stream") != Some(&Value::Bool(true))
        || json["stream_options"]["include_usage"] == true
    {
        return None;
    }
    let object = json.as_object_mut()?;
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    // `null` or any other non-object would leave the usage report off.
    if !options.is_object() {
        *options = Value::Object(Default::default());
    }
    options
        .as_object_mut()?
        .insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&json).ok().map(Bytes::from)
}

/// Count the tokens a response reported against everything its request was charged to.
pub fn charge_usage(tokens: u64, admission: Admission) {
    Limits::add_tokens(admission.charged(), tokens, clock::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn streaming_requests_are_amended_to_report_usage_once() {
        let amended = ask_for_stream_usage(Some(&json!({"stream": true, "model": "m"}))).unwrap();
        let v: Value = serde_json::from_slice(&amended).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        assert!(ask_for_stream_usage(Some(&v)).is_none());
        assert!(ask_for_stream_usage(Some(&json!({"stream": false}))).is_none());
        for options in [json!(null), json!("x"), json!({"include_usage": false})] {
            let amended =
                ask_for_stream_usage(Some(&json!({"stream": true, "stream_options": options})))
                    .unwrap();
            let v: Value = serde_json::from_slice(&amended).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{options}");
        }
        assert!(ask_for_stream_usage(None).is_none());
    }

    #[test]
    fn models_named_in_the_query_are_found_in_any_spelling() {
        assert_eq!(
            query_models(Some("model=a&%6Dodel=b+c&models=d&model")),
            ["a", "b c", ""]
        );
        assert!(query_models(None).is_empty());
    }

    #[test]
    fn only_json_content_types_or_none_declare_json() {
        let with = |types: &[&str]| {
            let mut headers = HeaderMap::new();
            for t in types {
                headers.append(header::CONTENT_TYPE, t.parse().unwrap());
            }
            declares_json(&headers)
        };
        assert!(with(&[]));
        assert!(with(&["application/json"]));
        assert!(with(&["Application/JSON; charset=utf-8"]));
        assert!(with(&["application/vnd.api+json"]));
        assert!(!with(&["application/x-www-form-urlencoded"]));
        assert!(!with(&["text/plain"]));
        assert!(!with(&[
            "application/json",
            "application/x-www-form-urlencoded"
        ]));
    }

    #[test]
    fn only_body_rules_insist_on_json() {
        assert_eq!(parse_json(&Bytes::from_static(b"  "), true).unwrap(), None);
        assert!(parse_json(&Bytes::from_static(b"not json"), true).is_err());
        assert_eq!(
            parse_json(&Bytes::from_static(b"not json"), false).unwrap(),
            None
        );
    }
}
