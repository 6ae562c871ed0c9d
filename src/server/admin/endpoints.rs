//! Every admin endpoint, once: its method, path, handler and OpenAPI description together,
//! so what is routed is exactly what is documented.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, on};
use serde::Deserialize;
use serde_json::json;

use super::{AdminState, Body, OptionalBody, PathParam, Refusal, SecretBody, error};
use crate::ops::OpsError;
use crate::ops::audit::AuditQuery;
use crate::ops::views::{
    DenyRequest, DeriveTokenRequest, NewCapabilities, NewSecretRequest, NewTokenRequest,
    RotateSecretRequest, TestCapabilityRequest, UpdateTokenRequest, UsageQuery,
};
use crate::policy::PolicySpec;
use crate::server::openapi::{Doc, Verb, array_of, path_param, query_param, schema};
use crate::store::ApprovalState;

/// Who the admin API says it is: the decider of an approval, the client of a trial run.
const ADMIN_API: &str = "admin-api";

/// One routed, documented endpoint.
pub struct Endpoint {
    /// Its path, with `{param}` placeholders.
    pub path: &'static str,
    /// Its method.
    pub verb: Verb,
    /// Its OpenAPI description.
    pub doc: Doc,
    /// Its handler.
    pub route: MethodRouter<Arc<AdminState>>,
}

fn endpoint<H, T>(verb: Verb, path: &'static str, handler: H, doc: Doc) -> Endpoint
where
    H: Handler<T, Arc<AdminState>>,
    T: 'static,
{
    Endpoint {
        path,
        verb,
        doc,
        route: on(verb.filter(), handler),
    }
}

/// The admin API.
pub fn all() -> Vec<Endpoint> {
    use Verb::{Delete, Get, Patch, Post, Put};
    let secret = || path_param("name", "the secret's name");
    let token = || path_param("id", "the token's id (tok_…)");
    let policy = || path_param("name", "the policy's name");
    let approval = || path_param("id", "the approval's id (apr_…)");
    let capability = || path_param("name", "the capability's name");
    vec![
        endpoint(
            Get,
            "/admin/v1/secrets",
            list_secrets,
            Doc::new("List secrets (never values)", "secrets").ok(200, array_of("SecretView")),
        ),
        endpoint(
            Post,
            "/admin/v1/secrets",
            add_secret,
            Doc::new("Store a credential", "secrets")
                .body("NewSecretRequest")
                .ok(201, schema("SecretView"))
                .errors(&[400, 409, 413]),
        ),
        endpoint(
            Delete,
            "/admin/v1/secrets/{name}",
            remove_secret,
            Doc::new("Remove a secret and its tokens", "secrets")
                .param(secret())
                .ok(200, schema("SecretRemoved"))
                .errors(&[404]),
        ),
        endpoint(
            Post,
            "/admin/v1/secrets/{name}/rotate",
            rotate_secret,
            Doc::new("Replace a secret's value", "secrets")
                .param(secret())
                .body("RotateSecretRequest")
                .ok(200, schema("SecretView"))
                .errors(&[400, 404, 409, 413]),
        ),
        endpoint(
            Get,
            "/admin/v1/tokens",
            list_tokens,
            Doc::new("List tokens (never the token text)", "tokens").ok(200, array_of("TokenView")),
        ),
        endpoint(
            Post,
            "/admin/v1/tokens",
            create_token,
            Doc::new("Mint a token; its text is returned only here", "tokens")
                .body("NewTokenRequest")
                .ok(201, schema("MintedView"))
                .errors(&[400, 404, 413]),
        ),
        endpoint(
            Get,
            "/admin/v1/tokens/{id}",
            show_token,
            Doc::new("Show a token and its policies", "tokens")
                .param(token())
                .ok(200, schema("TokenDetail"))
                .errors(&[404]),
        ),
        endpoint(
            Patch,
            "/admin/v1/tokens/{id}",
            update_token,
            Doc::new("Replace a token's policy or named policy", "tokens")
                .param(token())
                .body("UpdateTokenRequest")
                .ok(200, schema("TokenDetail"))
                .errors(&[400, 404, 413]),
        ),
        endpoint(
            Post,
            "/admin/v1/tokens/{id}/revoke",
            revoke_token,
            Doc::new("Revoke a token and its children", "tokens")
                .param(token())
                .ok(200, schema("Revoked"))
                .errors(&[404]),
        ),
        endpoint(
            Post,
            "/admin/v1/tokens/{id}/derive",
            derive_token,
            Doc::new("Mint a narrower child of a token", "tokens")
                .param(token())
                .body("DeriveTokenRequest")
                .ok(201, schema("MintedView"))
                .errors(&[400, 404, 409, 413]),
        ),
        endpoint(
            Get,
            "/admin/v1/policies",
            list_policies,
            Doc::new("List named policies", "policies").ok(200, array_of("PolicyView")),
        ),
        endpoint(
            Get,
            "/admin/v1/policies/{name}",
            show_policy,
            Doc::new("Show a named policy", "policies")
                .param(policy())
                .ok(200, schema("PolicyView"))
                .errors(&[404]),
        ),
        endpoint(
            Put,
            "/admin/v1/policies/{name}",
            set_policy,
            Doc::new("Create or replace a named policy", "policies")
                .param(policy())
                .body("PolicySpec")
                .ok(200, schema("PolicyView"))
                .errors(&[400, 413]),
        ),
        endpoint(
            Delete,
            "/admin/v1/policies/{name}",
            remove_policy,
            Doc::new("Remove a named policy no active token follows", "policies")
                .param(policy())
                .no_content()
                .errors(&[404, 409]),
        ),
        endpoint(
            Get,
            "/admin/v1/capabilities",
            list_capabilities,
            Doc::new(
                "List the capabilities agents may invoke (config file and store)",
                "capabilities",
            )
            .ok(200, array_of("CapabilityView")),
        ),
        endpoint(
            Post,
            "/admin/v1/capabilities",
            add_capabilities,
            Doc::new(
                "Store capabilities, all or none, replacing stored ones of the same name",
                "capabilities",
            )
            .body("NewCapabilities")
            .ok(201, array_of("CapabilityAdded"))
            .errors(&[400, 409, 413]),
        ),
        endpoint(
            Get,
            "/admin/v1/capabilities/{name}",
            show_capability,
            Doc::new("Show a capability", "capabilities")
                .param(capability())
                .ok(200, schema("CapabilityView"))
                .errors(&[404]),
        ),
        endpoint(
            Delete,
            "/admin/v1/capabilities/{name}",
            remove_capability,
            Doc::new("Remove a stored capability", "capabilities")
                .param(capability())
                .no_content()
                .errors(&[404, 409]),
        ),
        endpoint(
            Post,
            "/admin/v1/capabilities/{name}/test",
            test_capability,
            Doc::new(
                "Run a capability as the operator (no token, policy or approval; audited)",
                "capabilities",
            )
            .param(capability())
            .optional_body("TestCapabilityRequest")
            .ok(
                200,
                json!({"description": "the capability's answer, scrubbed of every secret"}),
            )
            .errors(&[400, 403, 404, 413, 502, 504]),
        ),
        endpoint(
            Get,
            "/admin/v1/approvals",
            list_approvals,
            Doc::new("List held requests", "approvals")
                .param(query_param(
                    "all",
                    "include decided and expired ones",
                    json!({"type": "boolean"}),
                ))
                .ok(200, array_of("ApprovalView"))
                .errors(&[400]),
        ),
        endpoint(
            Get,
            "/admin/v1/approvals/{id}",
            show_approval,
            Doc::new("Show a held request", "approvals")
                .param(approval())
                .ok(200, schema("ApprovalView"))
                .errors(&[404]),
        ),
        endpoint(
            Post,
            "/admin/v1/approvals/{id}/approve",
            approve,
            Doc::new("Let a held request through", "approvals")
                .param(approval())
                .ok(200, schema("ApprovalView"))
                .errors(&[404, 409]),
        ),
        endpoint(
            Post,
            "/admin/v1/approvals/{id}/deny",
            deny,
            Doc::new("Refuse a held request", "approvals")
                .param(approval())
                .optional_body("DenyRequest")
                .ok(200, schema("ApprovalView"))
                .errors(&[400, 404, 409]),
        ),
        endpoint(
            Get,
            "/admin/v1/usage",
            usage,
            Doc::new(
                "Daily requests and LLM tokens per token and per agent",
                "usage",
            )
            .param(query_param(
                "days",
                "days to cover, today included (default 7)",
                json!({"type": "integer", "minimum": 1, "maximum": 366}),
            ))
            .param(query_param(
                "token",
                "only this token id",
                json!({"type": "string"}),
            ))
            .param(query_param(
                "agent",
                "only this agent",
                json!({"type": "string"}),
            ))
            .ok(200, schema("UsageReport"))
            .errors(&[400]),
        ),
        endpoint(
            Get,
            "/admin/v1/audit",
            audit,
            Doc::new("Audit records matching filters, oldest first", "audit")
                .param(query_param("agent", "only this agent", json!({"type": "string"})))
                .param(query_param("provider", "only this provider", json!({"type": "string"})))
                .param(query_param(
                    "since",
                    "a duration ago (1h, 7d) or an RFC 3339 time",
                    json!({"type": "string"}),
                ))
                .param(query_param(
                    "status",
                    "a status (404) or a class (4xx)",
                    json!({"type": "string"}),
                ))
                .param(query_param(
                    "limit",
                    "at most this many (default 100)",
                    json!({"type": "integer", "minimum": 1, "maximum": 10000}),
                ))
                .param(query_param(
                    "after",
                    "only records after this sequence number",
                    json!({"type": "integer"}),
                ))
                .param(query_param(
                    "oldest",
                    "the oldest matches rather than the newest",
                    json!({"type": "boolean"}),
                ))
                .ok(200, array_of("AuditView"))
                .errors(&[400]),
        ),
        endpoint(
            Get,
            "/admin/v1/audit/verify",
            verify_audit,
            Doc::new(
                "Walk the audit log's hash chains; names the first record altered, removed or reordered",
                "audit",
            )
            .ok(200, schema("VerifyReport")),
        ),
    ]
}

/// A query string, with errors in the API's shape.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Refusal> {
    q.map(|Query(q)| q)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_query", &e.body_text()))
}

type Shared = State<Arc<AdminState>>;
type Answer = Result<Response, Refusal>;

fn ok<T: serde::Serialize>(status: StatusCode, value: Result<T, OpsError>) -> Answer {
    value
        .map(|v| (status, Json(v)).into_response())
        .map_err(Refusal::from)
}

async fn list_secrets(State(s): Shared) -> Answer {
    ok(StatusCode::OK, s.ops.list_secrets().await)
}

async fn add_secret(State(s): Shared, SecretBody(req): SecretBody<NewSecretRequest>) -> Answer {
    let added = s
        .ops
        .add_secret(&s.vault, &req.name, &req.provider, &req.value)
        .await;
    ok(StatusCode::CREATED, added)
}

async fn rotate_secret(
    State(s): Shared,
    PathParam(name): PathParam,
    SecretBody(req): SecretBody<RotateSecretRequest>,
) -> Answer {
    ok(
        StatusCode::OK,
        s.ops.rotate_secret(&s.vault, &name, &req.value).await,
    )
}

async fn remove_secret(State(s): Shared, PathParam(name): PathParam) -> Answer {
    ok(StatusCode::OK, s.ops.remove_secret(&name).await)
}

async fn list_tokens(State(s): Shared) -> Answer {
    ok(StatusCode::OK, s.ops.list_tokens().await)
}

async fn create_token(State(s): Shared, Body(req): Body<NewTokenRequest>) -> Answer {
    ok(
        StatusCode::CREATED,
        s.ops.create_token(&s.vault, &req).await,
    )
}

async fn show_token(State(s): Shared, PathParam(id): PathParam) -> Answer {
    ok(StatusCode::OK, s.ops.show_token(&id).await)
}

async fn update_token(
    State(s): Shared,
    PathParam(id): PathParam,
    Body(req): Body<UpdateTokenRequest>,
) -> Answer {
    ok(StatusCode::OK, s.ops.update_token(&id, &req).await)
}

async fn revoke_token(State(s): Shared, PathParam(id): PathParam) -> Answer {
    ok(StatusCode::OK, s.ops.revoke_token(&id).await)
}

async fn derive_token(
    State(s): Shared,
    PathParam(id): PathParam,
    Body(req): Body<DeriveTokenRequest>,
) -> Answer {
    ok(
        StatusCode::CREATED,
        s.ops.derive_token(&s.vault, &id, &req).await,
    )
}

async fn list_policies(State(s): Shared) -> Answer {
    ok(StatusCode::OK, s.ops.list_policies().await)
}

async fn show_policy(State(s): Shared, PathParam(name): PathParam) -> Answer {
    ok(StatusCode::OK, s.ops.show_policy(&name).await)
}

async fn set_policy(
    State(s): Shared,
    PathParam(name): PathParam,
    Body(spec): Body<PolicySpec>,
) -> Answer {
    ok(StatusCode::OK, s.ops.set_policy(&name, &spec).await)
}

async fn remove_policy(State(s): Shared, PathParam(name): PathParam) -> Answer {
    s.ops
        .remove_policy(&name)
        .await
        .map(|()| StatusCode::NO_CONTENT.into_response())
        .map_err(Refusal::from)
}

async fn list_capabilities(State(s): Shared) -> Answer {
    let listed = s.ops.list_capabilities(&s.capabilities.catalog).await;
    ok(StatusCode::OK, listed)
}

async fn add_capabilities(State(s): Shared, Body(req): Body<NewCapabilities>) -> Answer {
    let added = s.ops.add_capabilities(&s.capabilities.catalog, &req).await;
    ok(StatusCode::CREATED, added)
}

async fn show_capability(State(s): Shared, PathParam(name): PathParam) -> Answer {
    let shown = s.ops.show_capability(&s.capabilities.catalog, &name).await;
    ok(StatusCode::OK, shown)
}

async fn remove_capability(State(s): Shared, PathParam(name): PathParam) -> Answer {
    s.ops
        .remove_capability(&s.capabilities.catalog, &name)
        .await
        .map(|()| StatusCode::NO_CONTENT.into_response())
        .map_err(Refusal::from)
}

async fn test_capability(
    State(s): Shared,
    PathParam(name): PathParam,
    OptionalBody(req): OptionalBody<TestCapabilityRequest>,
) -> Answer {
    let answer = s
        .capabilities
        .trial(&s.auditor)
        .run(&name, &req.arguments, ADMIN_API)
        .await?;
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list_approvals(State(s): Shared, q: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    ok(StatusCode::OK, s.ops.list_approvals(q.all).await)
}

async fn show_approval(State(s): Shared, PathParam(id): PathParam) -> Answer {
    ok(StatusCode::OK, s.ops.approval(&id).await)
}

async fn approve(State(s): Shared, PathParam(id): PathParam) -> Answer {
    let decided = s
        .ops
        .decide(&id, ApprovalState::Approved, None, ADMIN_API)
        .await;
    ok(StatusCode::OK, decided)
}

async fn deny(
    State(s): Shared,
    PathParam(id): PathParam,
    OptionalBody(req): OptionalBody<DenyRequest>,
) -> Answer {
    let decided = s
        .ops
        .decide(&id, ApprovalState::Denied, req.reason.as_deref(), ADMIN_API)
        .await;
    ok(StatusCode::OK, decided)
}

async fn usage(State(s): Shared, q: Result<Query<UsageQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    ok(StatusCode::OK, s.ops.usage(&q).await)
}

async fn audit(State(s): Shared, q: Result<Query<AuditQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    ok(StatusCode::OK, s.ops.audit(&q).await)
}

async fn verify_audit(State(s): Shared) -> Answer {
    ok(
        StatusCode::OK,
        s.ops.verify_audit(&s.vault.audit_key()).await,
    )
}
