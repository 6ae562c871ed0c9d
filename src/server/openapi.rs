//! The admin API's OpenAPI 3.1 document, served at `/openapi.json`. Built in code next to
//! the router so a new endpoint is described in the same change; the end-to-end tests
//! validate it and call every path it lists.

use serde_json::{Map, Value, json};

/// A reference to a schema in `components`.
fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn array_of(name: &str) -> Value {
    json!({"type": "array", "items": schema(name)})
}

/// One operation: `body` is the request schema, `ok` the success status and its schema
/// (`None` for no content), `errors` the error statuses it may answer.
fn op(
    summary: &str,
    tag: &str,
    params: Vec<Value>,
    body: Option<Value>,
    ok: (u16, Option<Value>),
    errors: &[u16],
) -> Value {
    let mut responses = Map::new();
    let success = match ok.1 {
        Some(s) => {
            json!({"description": "success", "content": {"application/json": {"schema": s}}})
        }
        None => json!({"description": "success, no content"}),
    };
    responses.insert(ok.0.to_string(), success);
    for status in [401, 503].iter().chain(errors) {
        responses.insert(
            status.to_string(),
            json!({"description": "error", "content": {"application/json": {"schema": schema("Error")}}}),
        );
    }
    let mut operation = json!({
        "summary": summary,
        "tags": [tag],
        "security": [{"adminToken": []}],
        "responses": responses,
    });
    if !params.is_empty() {
        operation["parameters"] = Value::Array(params);
    }
    if let Some(body) = body {
        operation["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": body}}});
    }
    operation
}

/// Mark an operation's request body as optional.
fn optional_body(mut operation: Value) -> Value {
    operation["requestBody"]["required"] = Value::Bool(false);
    operation
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn nullable_string() -> Value {
    json!({"type": ["string", "null"]})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn schemas() -> Value {
    let rules =
        json!({"type": "array", "items": {"type": "string", "description": "METHOD /path/glob"}});
    json!({
        "Error": object(&["error"], json!({
            "error": object(&["message", "code"], json!({"message": string(), "code": string()}))
        })),
        "SecretView": object(&["id", "name", "provider", "version", "tokens"], json!({
            "id": string(), "name": string(), "provider": string(),
            "version": {"type": "integer"}, "tokens": {"type": "integer"},
            "created_at": nullable_string(), "rotated_at": nullable_string()
        })),
        "NewSecretRequest": {
            "type": "object", "required": ["name", "provider", "value"], "additionalProperties": false,
            "properties": {"name": string(), "provider": string(),
                "value": {"type": "string", "description": "the credential; never echoed", "writeOnly": true}}
        },
        "RotateSecretRequest": {
            "type": "object", "required": ["value"], "additionalProperties": false,
            "properties": {"value": {"type": "string", "writeOnly": true}}
        },
        "SecretRemoved": object(&["name", "tokens_removed"], json!({
            "name": string(), "tokens_removed": {"type": "integer"}
        })),
        "PolicySpec": {
            "type": "object", "additionalProperties": false,
            "description": "the same fields as a policy file",
            "properties": {
                "allow": rules, "deny": rules, "require_approval": rules,
                "models": {"type": "array", "items": string()},
                "body": {"type": "array", "items": {"type": "object"}},
                "rpm": {"type": "integer", "minimum": 1}, "concurrency": {"type": "integer", "minimum": 1},
                "daily_requests": {"type": "integer", "minimum": 0}, "daily_tokens": {"type": "integer", "minimum": 0},
                "ttl": {"type": "string", "description": "e.g. 30m, 8h"},
                "expires_at": {"type": "string", "format": "date-time"}
            }
        },
        "NullablePolicy": {"oneOf": [schema("PolicySpec"), {"type": "null"}]},
        "TokenView": object(&["id", "agent", "secret", "provider", "token", "state"], json!({
            "id": string(), "agent": string(), "secret": string(), "provider": string(),
            "token": {"type": "string", "description": "a short prefix, never the token"},
            "state": {"type": "string", "enum": ["active", "revoked", "expired"]},
            "parent": nullable_string(), "policy_name": nullable_string(), "own_policy": {"type": "boolean"},
            "created_at": nullable_string(), "expires_at": nullable_string(),
            "revoked_at": nullable_string(), "last_used_at": nullable_string()
        })),
        "TokenDetail": object(&["token"], json!({
            "token": schema("TokenView"), "policy": schema("NullablePolicy"), "named_policy": schema("NullablePolicy")
        })),
        "MintedView": object(&["token", "id", "agent"], json!({
            "token": {"type": "string", "description": "shown only once"},
            "id": string(), "agent": string(), "parent_id": nullable_string(), "expires_at": nullable_string()
        })),
        "NewTokenRequest": {
            "type": "object", "required": ["secret"], "additionalProperties": false,
            "properties": {"secret": string(), "agent": string(), "policy": schema("NullablePolicy"),
                "policy_name": nullable_string()}
        },
        "DeriveTokenRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {"agent": nullable_string(), "policy": schema("NullablePolicy")}
        },
        "UpdateTokenRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {"policy": schema("NullablePolicy"), "policy_name": nullable_string(),
                "clear_policy_name": {"type": "boolean"}}
        },
        "Revoked": object(&["id", "revoked"], json!({"id": string(), "revoked": {"type": "integer"}})),
        "PolicyView": object(&["name", "policy"], json!({
            "name": string(), "policy": schema("PolicySpec"),
            "created_at": nullable_string(), "updated_at": nullable_string()
        })),
        "ApprovalView": object(&["id", "state", "request"], json!({
            "id": string(),
            "state": {"type": "string", "enum": ["pending", "approved", "denied", "expired"]},
            "request": {"type": "object", "description": "agent, provider, method, path, model, rule"},
            "reason": nullable_string(), "created_at": nullable_string(), "expires_at": nullable_string(),
            "decided_at": nullable_string(), "decided_by": nullable_string()
        })),
        "DenyRequest": {
            "type": "object", "additionalProperties": false, "properties": {"reason": nullable_string()}
        },
        "TokenUsage": object(&["day", "token_id", "agent", "requests", "tokens"], json!({
            "day": {"type": "string", "format": "date"}, "token_id": string(), "agent": string(),
            "requests": {"type": "integer"}, "tokens": {"type": "integer"}
        })),
        "AgentUsage": object(&["day", "agent", "requests", "tokens"], json!({
            "day": {"type": "string", "format": "date"}, "agent": string(),
            "requests": {"type": "integer"}, "tokens": {"type": "integer"}
        })),
        "UsageReport": object(&["tokens", "agents"], json!({
            "tokens": array_of("TokenUsage"), "agents": array_of("AgentUsage")
        })),
    })
}

/// The whole document.
pub fn document() -> Value {
    let secret = path_param("name", "the secret's name");
    let token = path_param("id", "the token's id (tok_…)");
    let policy = path_param("name", "the policy's name");
    let approval = path_param("id", "the approval's id (apr_…)");
    let s = |name: &str| Some(schema(name));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "SEKS admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Operate a SEKS broker: secrets, agent tokens, named policies, approvals and usage. \
                Send the admin token (`seks admin token create`) as `Authorization: Bearer <token>`."
        },
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
        "paths": {
            "/admin/v1/secrets": {
                "get": op("List secrets (never values)", "secrets", vec![], None, (200, Some(array_of("SecretView"))), &[]),
                "post": op("Store a credential", "secrets", vec![], s("NewSecretRequest"), (201, s("SecretView")), &[400, 409, 413]),
            },
            "/admin/v1/secrets/{name}": {
                "delete": op("Remove a secret and its tokens", "secrets", vec![secret.clone()], None, (200, s("SecretRemoved")), &[404]),
            },
            "/admin/v1/secrets/{name}/rotate": {
                "post": op("Replace a secret's value", "secrets", vec![secret], s("RotateSecretRequest"), (200, s("SecretView")), &[400, 404, 409, 413]),
            },
            "/admin/v1/tokens": {
                "get": op("List tokens (never the token text)", "tokens", vec![], None, (200, Some(array_of("TokenView"))), &[]),
                "post": op("Mint a token; its text is returned only here", "tokens", vec![], s("NewTokenRequest"), (201, s("MintedView")), &[400, 404, 413]),
            },
            "/admin/v1/tokens/{id}": {
                "get": op("Show a token and its policies", "tokens", vec![token.clone()], None, (200, s("TokenDetail")), &[404]),
                "patch": op("Replace a token's policy or named policy", "tokens", vec![token.clone()], s("UpdateTokenRequest"), (200, s("TokenDetail")), &[400, 404, 413]),
            },
            "/admin/v1/tokens/{id}/revoke": {
                "post": op("Revoke a token and its children", "tokens", vec![token.clone()], None, (200, s("Revoked")), &[404]),
            },
            "/admin/v1/tokens/{id}/derive": {
                "post": op("Mint a narrower child of a token", "tokens", vec![token], s("DeriveTokenRequest"), (201, s("MintedView")), &[400, 404, 409, 413]),
            },
            "/admin/v1/policies": {
                "get": op("List named policies", "policies", vec![], None, (200, Some(array_of("PolicyView"))), &[]),
            },
            "/admin/v1/policies/{name}": {
                "get": op("Show a named policy", "policies", vec![policy.clone()], None, (200, s("PolicyView")), &[404]),
                "put": op("Create or replace a named policy", "policies", vec![policy.clone()], s("PolicySpec"), (200, s("PolicyView")), &[400, 413]),
                "delete": op("Remove a named policy no token follows", "policies", vec![policy], None, (204, None), &[404, 409]),
            },
            "/admin/v1/approvals": {
                "get": op("List held requests", "approvals",
                    vec![query_param("all", "include decided and expired ones", json!({"type": "boolean"}))],
                    None, (200, Some(array_of("ApprovalView"))), &[400]),
            },
            "/admin/v1/approvals/{id}": {
                "get": op("Show a held request", "approvals", vec![approval.clone()], None, (200, s("ApprovalView")), &[404]),
            },
            "/admin/v1/approvals/{id}/approve": {
                "post": op("Let a held request through", "approvals", vec![approval.clone()], None, (200, s("ApprovalView")), &[404, 409]),
            },
            "/admin/v1/approvals/{id}/deny": {
                "post": optional_body(op("Refuse a held request", "approvals", vec![approval], s("DenyRequest"), (200, s("ApprovalView")), &[400, 404, 409])),
            },
            "/admin/v1/usage": {
                "get": op("Daily requests and LLM tokens per token and per agent", "usage", vec![
                    query_param("days", "days to cover, today included (default 7)", json!({"type": "integer", "minimum": 1, "maximum": 366})),
                    query_param("token", "only this token id", string()),
                    query_param("agent", "only this agent", string()),
                ], None, (200, s("UsageReport")), &[400]),
            },
        },
    })
}
