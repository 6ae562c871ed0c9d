//! No plaintext secret or token in the data directory or in anything the broker prints.

use std::path::Path;

use base64::Engine;

use crate::support::Env;
use crate::support::http::send;
use crate::support::mock::MockUpstream;

fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn forms(value: &str) -> Vec<Vec<u8>> {
    let b = value.as_bytes();
    vec![
        b.to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(b)
            .into_bytes(),
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into_bytes(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn data_directory_and_output_hold_no_plaintext_secret_or_token() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    let secrets = [
        "sk-proj-HYGIENE-first-secret-value",
        "sk-ant-HYGIENE-second-secret",
        "sk-proj-HYGIENE-rotated-value",
    ];
    env.add_secret("one", "openai", secrets[0]).await;
    env.add_secret("two", "anthropic", secrets[1]).await;
    let t1 = env.create_token("one", &["--agent", "a"]).await;
    let t2 = env
        .create_token("two", &["--agent", "b", "--ttl", "1h"])
        .await;
    let broker = env.serve_with(&[("SEKS_LOG", "debug")]).await;

    let ok = send(
        "POST",
        &broker.url("/api/openai/v1/chat/completions"),
        &[("authorization", &format!("Bearer {t1}"))],
        "{}",
    )
    .await;
    assert_eq!(ok.status, 200);
    let ok = send(
        "POST",
        &broker.url("/api/anthropic/v1/messages"),
        &[("x-api-key", &t2)],
        "{}",
    )
    .await;
    assert_eq!(ok.status, 200);
    // Failures log too: wrong provider, tampered token, unreachable path.
    send(
        "POST",
        &broker.url("/api/anthropic/v1/messages"),
        &[("x-api-key", &t1)],
        "{}",
    )
    .await;
    send(
        "POST",
        &broker.url("/api/openai/v1/x"),
        &[("authorization", &format!("Bearer {t1}x"))],
        "{}",
    )
    .await;
    env.cli(&["secret", "rotate", "one"], secrets[2]).await.ok();
    env.cli(&["secret", "list"], "").await.ok();
    env.cli(&["token", "list"], "").await.ok();
    env.cli(&["token", "list", "--json"], "").await.ok();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    send(
        "GET",
        &broker.url("/api/openai/v1/models"),
        &[("authorization", &format!("Bearer {t1}"))],
        "",
    )
    .await;
    assert_eq!(
        mock.requests().last().unwrap().header("authorization"),
        Some(format!("Bearer {}", secrets[2]).as_str())
    );
    broker.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let transcript = env.transcript();
    assert!(
        transcript.contains("listening on"),
        "the transcript must hold the broker's output"
    );
    assert!(
        transcript.contains("seks::audit"),
        "debug logs were captured"
    );
    for needle in secrets.iter().flat_map(|s| forms(s)).chain(
        [t1.clone(), t2.clone()]
            .iter()
            .map(|t| t.as_bytes().to_vec()),
    ) {
        let shown = String::from_utf8_lossy(&needle).into_owned();
        assert!(
            !contains(transcript.as_bytes(), &needle),
            "output contains {shown}"
        );
        for (path, bytes) in files_under(env.data_dir()) {
            assert!(!contains(&bytes, &needle), "{path} contains {shown}");
        }
    }
}
