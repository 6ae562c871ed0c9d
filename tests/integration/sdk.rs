//! The providers' official Python SDKs as real clients, through `seks serve`, to the mock.

use crate::support::mock::MockUpstream;
use crate::support::{Env, run_python};

struct Case {
    script: &'static str,
    provider: &'static str,
    /// Base URL path the SDK is given, below the broker.
    base_path: &'static str,
    key: &'static str,
    /// Header in which the upstream must see the key, and its exact value.
    header: &'static str,
    header_value: &'static str,
    ok_scenarios: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        script: "openai_client.py",
        provider: "openai",
        base_path: "/api/openai/v1",
        key: "sk-proj-REAL-openai-key",
        header: "authorization",
        header_value: "Bearer sk-proj-REAL-openai-key",
        ok_scenarios: &["chat", "stream"],
    },
    Case {
        script: "anthropic_client.py",
        provider: "anthropic",
        base_path: "/api/anthropic",
        key: "sk-ant-REAL-anthropic-key",
        header: "x-api-key",
        header_value: "sk-ant-REAL-anthropic-key",
        ok_scenarios: &["message", "stream"],
    },
    Case {
        script: "genai_client.py",
        provider: "gemini",
        base_path: "/api/gemini",
        key: "AIza-REAL-gemini-key",
        header: "x-goog-api-key",
        header_value: "AIza-REAL-gemini-key",
        ok_scenarios: &["generate", "stream"],
    },
];

async fn run_case(case: &Case) {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("real", case.provider, case.key).await;
    let token = env.create_token("real", &["--agent", "sdk"]).await;
    let expired = env
        .create_token("real", &["--agent", "short", "--ttl", "1s"])
        .await;
    let revoked = env.create_token("real", &["--agent", "revoked"]).await;
    let id = env.token_id("revoked").await;
    env.cli(&["token", "revoke", &id], "").await.ok();
    let broker = env.serve().await;
    let base = broker.url(case.base_path);

    for scenario in case.ok_scenarios {
        let out = run_python(
            case.script,
            &[scenario],
            &[("SEKS_BASE_URL", &base), ("SEKS_TOKEN", &token)],
        )
        .await;
        assert!(out.status.success(), "{} {scenario}: {out:#?}", case.script);
    }
    let seen = mock.requests();
    assert_eq!(
        seen.len(),
        case.ok_scenarios.len(),
        "{}: {seen:#?}",
        case.script
    );
    for req in &seen {
        assert_eq!(
            req.header(case.header),
            Some(case.header_value),
            "{}: {}",
            case.script,
            req.raw()
        );
        assert!(
            !req.raw().contains(&token),
            "{}: the upstream saw the agent token",
            case.script
        );
        assert!(
            !req.raw().contains("seks_"),
            "{}: {}",
            case.script,
            req.raw()
        );
    }

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // A changed checksum character (never the one already there).
    let changed = if token.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{changed}", &token[..token.len() - 1]);
    for (bad, code) in [
        (&wrong, "malformed_token"),
        (&revoked, "token_revoked"),
        (&expired, "token_expired"),
    ] {
        let out = run_python(
            case.script,
            &["unauthorized"],
            &[("SEKS_BASE_URL", &base), ("SEKS_TOKEN", bad)],
        )
        .await;
        assert!(
            out.status.success(),
            "{} unauthorized ({code}): {out:#?}",
            case.script
        );
        if case.provider != "gemini" {
            assert!(
                out.stdout.starts_with(code),
                "{}: expected {code}: {}",
                case.script,
                out.stdout
            );
        }
    }
    assert_eq!(
        mock.requests().len(),
        case.ok_scenarios.len(),
        "an unauthorized request reached the upstream"
    );
    broker.stop().await;
}

#[tokio::test]
async fn openai_sdk_through_the_broker() {
    run_case(&CASES[0]).await;
}

#[tokio::test]
async fn anthropic_sdk_through_the_broker() {
    run_case(&CASES[1]).await;
}

#[tokio::test]
async fn google_genai_sdk_through_the_broker() {
    run_case(&CASES[2]).await;
}
