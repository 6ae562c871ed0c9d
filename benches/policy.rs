//! Policy evaluation cost per request: path rules and models for a token without body
//! rules, against no policy at all. Run: `cargo bench --bench policy`.

use http::Method;
use seks::policy::{self, PolicySpec, RequestFacts, RequestPath};

fn main() {
    divan::main();
}

const POLICY: &str = r#"
allow = ["POST /v1/chat/completions", "POST /v1/embeddings", "GET /v1/models", "GET /v1/models/*"]
deny = ["* /v1/files/**", "* /v1/fine_tuning/**", "DELETE /**", "POST /v1/images/**"]
require_approval = ["POST /v1/batches"]
models = ["gpt-4o-mini", "gpt-4o", "o3-mini"]
rpm = 600
"#;

/// What the proxy does per request for policy: nothing without one (it returns before
/// building the request facts), else build the facts and check each spec.
fn evaluate(specs: &[PolicySpec]) -> bool {
    if specs.is_empty() {
        return true;
    }
    let path = RequestPath::new(&Method::POST, divan::black_box("/v1/chat/completions"));
    let facts = RequestFacts {
        path: &path,
        models: &["gpt-4o-mini"],
        body: None,
    };
    specs
        .iter()
        .all(|s| policy::check_request(s, &facts).is_ok())
}

/// A token without policy.
#[divan::bench]
fn no_policy(bencher: divan::Bencher) {
    bencher.bench(|| evaluate(divan::black_box(&[])));
}

/// A token with path rules, models and limits (but no body rules).
#[divan::bench]
fn rules_and_models(bencher: divan::Bencher) {
    let specs = [PolicySpec::from_toml(POLICY).unwrap()];
    bencher.bench(|| evaluate(divan::black_box(&specs)));
}
