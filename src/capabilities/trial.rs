//! An operator's trial run of a capability (`seks capability test`, the admin API's
//! `POST /admin/v1/capabilities/{name}/test`): no token, policy or approval, since the
//! operator holds the secrets anyway, but validated, scrubbed and audited like an agent's
//! call — and its answer is withheld unless the audit record is durably written.

use std::time::Instant;

use http::StatusCode;
use serde_json::Value;

use super::Catalog;
use super::invoke::{CALL_PATH, CallError, Runner, find, note_outcome};
use super::params::summarise;
use crate::audit::{self, AuditRecord, Auditor};
use crate::clock;
use crate::proxy::ProxyError;
use crate::scrub::Redactor;
use crate::store::DEFAULT_TENANT;

/// What a trial run needs: the definitions, what runs them, the audit log, and the
/// redactor its error messages pass through.
pub struct Trial<'a> {
    /// The capabilities to choose from.
    pub catalog: &'a Catalog,
    /// What runs them.
    pub runner: &'a Runner,
    /// Where the run is recorded.
    pub auditor: &'a Auditor,
    /// Masks secrets in error messages that quote a backend.
    pub redactor: &'a Redactor,
}

/// A trial that failed or was refused, its message scrubbed of every secret.
#[derive(Debug)]
pub struct TrialFailure {
    /// The status an agent's call would have had.
    pub status: StatusCode,
    /// A stable machine-readable reason.
    pub code: &'static str,
    /// What went wrong, with the backend's words (the operator's to read), masked.
    pub message: String,
}

impl Trial<'_> {
    /// Run capability `name` with `args` for the operator, recorded as coming from `client`
    /// (`cli`, `admin-api`); its answer, scrubbed.
    pub async fn run(&self, name: &str, args: &Value, client: &str) -> Result<Value, TrialFailure> {
        let started = Instant::now();
        let mut record = AuditRecord {
            at_ms: clock::now_ms(),
            request_id: audit::new_request_id(),
            tenant: DEFAULT_TENANT.to_owned(),
            agent: Some("operator".to_owned()),
            method: "TEST".to_owned(),
            path: format!("{CALL_PATH}/{name}"),
            capability: Some(name.to_owned()),
            arguments: Some(summarise(args)),
            client: client.to_owned(),
            ..AuditRecord::default()
        };
        let result = self.attempt(name, args, &mut record).await;
        note_outcome(&mut record, &result, false);
        record.status = result
            .as_ref()
            .map_or_else(|e| e.status(), |_| StatusCode::OK)
            .as_u16();
        record.total_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let written = self.auditor.submit_durable(record, None).await;
        let result = match written {
            Ok(()) => result,
            Err(e) => Err(CallError::Refused(ProxyError::AuditUnavailable(
                e.to_string(),
            ))),
        };
        result.map_err(|e| TrialFailure {
            status: e.status(),
            code: e.code(),
            message: String::from_utf8_lossy(&self.redactor.redact_text(e.to_string().as_bytes()))
                .into_owned(),
        })
    }

    async fn attempt(
        &self,
        name: &str,
        args: &Value,
        record: &mut AuditRecord,
    ) -> Result<Value, CallError> {
        let capability = find(self.catalog, name).await?;
        let common = capability.spec.common();
        record.secret = Some(common.secret.to_owned());
        record.provider = capability.spec.provider().map(str::to_owned);
        let validated = capability.validate(args)?;
        self.runner
            .run(DEFAULT_TENANT, &capability, validated, None)
            .await
    }
}
