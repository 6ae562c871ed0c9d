//! Providers as data: every built-in injects exactly the credential format its real service
//! expects, a provider defined in the config alone works end to end, Telegram's path token
//! never leaks back, and bad provider entries are refused with the provider and field named.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::support::forms::found_in;
use crate::support::http::send;
use crate::support::mock::{MockUpstream, Seen, token_endpoint};
use crate::support::{BUILTIN_PROVIDERS, Env, config_for};

/// How the agent's SDK sends its token, per provider.
enum Sends {
    /// `Authorization: <scheme> <token>`.
    Auth(&'static str),
    /// A header with the bare token.
    Header(&'static str),
    /// Basic with the token as the user (`curl -u TOKEN:`).
    Basic,
    /// `/bot<token>/…`.
    Path,
}

/// What the upstream must receive: a header with exactly this value, or the key in the path.
enum Expects {
    /// (header, template with `{}` for the key).
    Header(&'static str, &'static str),
    /// The target starts with `/bot<key>/`.
    PathBot,
    /// `Authorization: Bearer` with the access token the mock token endpoint minted.
    Minted,
}

fn case(provider: &str) -> (Sends, Expects) {
    use Expects::Header as H;
    match provider {
        "anthropic" => (Sends::Header("x-api-key"), H("x-api-key", "{}")),
        "gemini" => (Sends::Header("x-goog-api-key"), H("x-goog-api-key", "{}")),
        "github" => (Sends::Auth("token"), H("authorization", "Bearer {}")),
        "gitlab" => (Sends::Header("private-token"), H("private-token", "{}")),
        "discord" => (Sends::Auth("Bot"), H("authorization", "Bot {}")),
        "telegram" => (Sends::Path, Expects::PathBot),
        "brave" => (
            Sends::Header("x-subscription-token"),
            H("x-subscription-token", "{}"),
        ),
        "stripe" => (Sends::Basic, H("authorization", "Bearer {}")),
        "linear" => (Sends::Header("authorization"), H("authorization", "{}")),
        "gmail" | "msgraph" => (Sends::Auth("Bearer"), Expects::Minted),
        _ => (Sends::Auth("Bearer"), H("authorization", "Bearer {}")),
    }
}

/// A realistic-looking key per provider (Telegram's has the bot id and a colon, OAuth2's is
/// the mock token endpoint's client and refresh token).
fn key_for(provider: &str) -> String {
    match provider {
        "telegram" => "123456789:AAE-real_telegram-KEY0123456789".to_owned(),
        "gmail" | "msgraph" => token_endpoint::default_secret(),
        p => format!("real-{p}-KEY-0123456789abcdef"),
    }
}

/// Headers in which some provider carries a credential: exactly one may reach the upstream.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "private-token",
    "x-subscription-token",
];

fn assert_credential(provider: &str, seen: &Seen, key: &str, token: &str, minted: &[String]) {
    let (_, expects) = case(provider);
    let raw = seen.raw();
    assert!(
        !raw.contains(token),
        "{provider}: the agent token reached upstream:\n{raw}"
    );
    let carrying: Vec<&str> = CREDENTIAL_HEADERS
        .iter()
        .copied()
        .filter(|h| seen.header(h).is_some())
        .collect();
    match expects {
        Expects::Header(name, template) => {
            assert_eq!(carrying, [name], "{provider}: credential headers upstream");
            assert_eq!(
                seen.header(name),
                Some(template.replace("{}", key).as_str()),
                "{provider}"
            );
            assert_eq!(seen.target, "/v1/things?q=1", "{provider}");
        }
        Expects::PathBot => {
            assert!(carrying.is_empty(), "{provider}: {carrying:?}");
            assert_eq!(seen.target, format!("/bot{key}/getMe?q=1"), "{provider}");
        }
        Expects::Minted => {
            assert_eq!(carrying, ["authorization"], "{provider}");
            let access = seen
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "));
            assert!(
                access.is_some_and(|a| minted.iter().any(|m| m == a)),
                "{provider}: not a minted token: {access:?}"
            );
            assert_eq!(seen.target, "/v1/things?q=1", "{provider}");
        }
    }
}

#[tokio::test]
async fn every_builtin_gets_exactly_its_services_credential_format() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    let mut tokens = Vec::new();
    for provider in BUILTIN_PROVIDERS {
        env.add_secret(&format!("{provider}-key"), provider, &key_for(provider))
            .await;
        let token = env
            .create_token(&format!("{provider}-key"), &["--agent", provider])
            .await;
        tokens.push((provider, token));
    }
    let broker = env.serve().await;
    for (provider, token) in &tokens {
        let (sends, _) = case(provider);
        let mut path = format!("/api/{provider}/v1/things?q=1");
        let mut headers: Vec<(String, String)> = vec![
            ("notion-version".into(), "2022-06-28".into()),
            ("content-type".into(), "application/json".into()),
        ];
        match sends {
            Sends::Auth(scheme) => {
                headers.push(("authorization".into(), format!("{scheme} {token}")))
            }
            Sends::Header(name) => headers.push((name.into(), token.clone())),
            Sends::Basic => headers.push((
                "authorization".into(),
                format!("Basic {}", BASE64.encode(format!("{token}:"))),
            )),
            Sends::Path => path = format!("/api/{provider}/bot{token}/getMe?q=1"),
        }
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // The token endpoint's requests are not the API's.
        let api_requests = || -> Vec<Seen> {
            mock.requests()
                .into_iter()
                .filter(|s| s.target != "/oauth2/token")
                .collect()
        };
        let before = api_requests().len();
        let reply = send("GET", &broker.url(&path), &header_refs, "").await;
        assert_eq!(reply.status, 200, "{provider}: {reply:?}");
        let seen = api_requests();
        assert_eq!(seen.len(), before + 1, "{provider}");
        let key = key_for(provider);
        assert_credential(provider, &seen[before], &key, token, &mock.oauth.issued());
        // Headers that carry no credential pass through (Notion's API version among them).
        assert_eq!(seen[before].header("notion-version"), Some("2022-06-28"));
        assert!(
            found_in(&key, reply.body.as_bytes()).is_empty(),
            "{provider}: the key came back: {}",
            reply.body
        );
    }
    broker.stop().await;
}

const ACME_KEY: &str = "acme-live-KEY-0123456789";
const SEARCH_KEY: &str = "srch+KEY/0123456789=";

fn custom_config(upstream: &str) -> String {
    format!(
        r#"
[upstream]
connect_timeout = "2s"
response_timeout = "2s"
read_timeout = "2s"

[providers.acme]
base_url = "{upstream}/acme/v2"
token_in = [{{ in = "header", name = "X-Acme-Token" }}]
auth = {{ scheme = "header", name = "X-Api-Key", template = "Key {{}}" }}
errors = "message"

[providers.search]
base_url = "{upstream}"
token_in = [{{ in = "query", param = "api_key" }}]
auth = {{ scheme = "query", param = "key" }}
"#
    )
}

#[tokio::test]
async fn a_provider_defined_in_the_config_alone_works_end_to_end() {
    let mock = MockUpstream::start().await;
    let env = Env::new(&custom_config(&mock.url()));
    env.add_secret("acme-main", "acme", ACME_KEY).await;
    env.add_secret("search-main", "search", SEARCH_KEY).await;
    let acme = env.create_token("acme-main", &["--agent", "a"]).await;
    let search = env.create_token("search-main", &["--agent", "s"]).await;
    let broker = env.serve().await;

    let reply = send(
        "POST",
        &broker.url("/api/acme/widgets"),
        &[("x-acme-token", &acme), ("x-api-key", "forged")],
        "{}",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = mock.requests();
    assert_eq!(seen[0].target, "/acme/v2/widgets");
    assert_eq!(
        seen[0].header("x-api-key"),
        Some(format!("Key {ACME_KEY}").as_str())
    );
    assert_eq!(seen[0].header("x-acme-token"), None);

    let reply = send(
        "GET",
        &broker.url(&format!(
            "/api/search/res/v1?q=rust&api_key={search}&key=forged"
        )),
        &[],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = mock.requests();
    assert_eq!(
        seen[1].target,
        "/res/v1?q=rust&key=srch%2BKEY%2F0123456789%3D"
    );
    for s in &seen {
        assert!(
            !s.raw().contains("seks_"),
            "an agent token went upstream: {s:?}"
        );
    }

    // The custom error shape, and the token location named in it.
    let missing = send("GET", &broker.url("/api/acme/widgets"), &[], "").await;
    assert_eq!(missing.status, 401);
    let message = missing.json()["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("X-Acme-Token: <token>"), "{message}");
    // A token for one custom provider is refused by another.
    let wrong = send(
        "GET",
        &broker.url("/api/acme/widgets"),
        &[("x-acme-token", &search)],
        "",
    )
    .await;
    assert_eq!(wrong.header("x-seks-error"), Some("wrong_provider"));
    assert_eq!(mock.requests().len(), 2);

    let listed = env.cli(&["provider", "list", "--json"], "").await.ok();
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let acme_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "acme")
        .unwrap();
    assert_eq!(acme_row["origin"], "config");
    assert_eq!(acme_row["inject"], "X-Api-Key: Key <key>");
    assert_eq!(acme_row["token_in"][0], "X-Acme-Token: <token>");
    broker.stop().await;
}

const TELEGRAM_KEY: &str = "987654321:AAH-telegram_REAL-key0123456789";

#[tokio::test]
async fn telegrams_real_token_never_comes_back_even_when_the_upstream_quotes_the_url() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("tg", "telegram", TELEGRAM_KEY).await;
    let token = env.create_token("tg", &["--agent", "tg-bot"]).await;
    // Policies see file downloads without the token: `/file/<file_path>`.
    let downloader = env
        .create_token(
            "tg",
            &["--agent", "tg-files", "--allow", "GET /file/documents/**"],
        )
        .await;
    let broker = env.serve_with(&[("SEKS_LOG", "debug")]).await;

    let reply = send(
        "POST",
        &broker.url(&format!("/api/telegram/bot{token}/echo-url?chat_id=1")),
        &[("content-type", "application/json")],
        r#"{"text":"hi"}"#,
    )
    .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    let seen = mock.requests();
    assert_eq!(
        seen[0].target,
        format!("/bot{TELEGRAM_KEY}/echo-url?chat_id=1")
    );
    assert!(
        reply.json()["description"]
            .as_str()
            .unwrap()
            .starts_with("Not Found: /bot")
    );
    let mut replies = vec![reply];

    // A file download: `/file/bot<token>/<file_path>` gets the key in the token's place.
    let file = send(
        "GET",
        &broker.url(&format!(
            "/api/telegram/file/bot{downloader}/documents/file_1.pdf"
        )),
        &[],
        "",
    )
    .await;
    assert_eq!(file.status, 200, "{file:?}");
    assert_eq!(
        mock.requests()[1].target,
        format!("/file/bot{TELEGRAM_KEY}/documents/file_1.pdf")
    );
    // The mock's answer quoted the path it got; the key in it is masked.
    assert!(
        file.json()["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/file/bot*")),
        "{file:?}"
    );
    // A missing file's 404 quotes the URL, raw and percent-encoded.
    let missing_file = send(
        "GET",
        &broker.url(&format!(
            "/api/telegram/file/bot{downloader}/documents/echo-url"
        )),
        &[],
        "",
    )
    .await;
    assert_eq!(missing_file.status, 404, "{missing_file:?}");
    assert_eq!(
        mock.requests()[2].target,
        format!("/file/bot{TELEGRAM_KEY}/documents/echo-url")
    );
    // The download token may not call methods.
    let method = send(
        "POST",
        &broker.url(&format!("/api/telegram/bot{downloader}/sendMessage")),
        &[],
        "",
    )
    .await;
    assert_eq!(method.status, 403, "{method:?}");
    replies.extend([file, missing_file, method]);
    for reply in &replies {
        let mut everything = reply.body.clone();
        for (k, v) in &reply.headers {
            everything.push_str(&format!("\n{k}: {v}"));
        }
        assert!(
            found_in(TELEGRAM_KEY, everything.as_bytes()).is_empty(),
            "the bot token came back: {everything}"
        );
    }

    // Path tricks around the token segment are refused before anything is forwarded.
    for path in [
        format!("/api/telegram/bot{token}/../x"),
        format!("/api/telegram/bot{token}%2f..%2fx"),
        format!("/api/telegram/bot{token}//x"),
        format!("/api/telegram/file/bot{token}/../../x"),
        format!("/api/telegram/file/bot{token}/%2e%2e/x"),
    ] {
        let reply = send("GET", &broker.url(&path), &[], "").await;
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
    }
    let missing = send("GET", &broker.url("/api/telegram/getMe"), &[], "").await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["ok"], false);
    assert!(
        missing.json()["description"]
            .as_str()
            .unwrap()
            .contains("/bot<token>/"),
        "{missing:?}"
    );
    assert_eq!(mock.requests().len(), 3);

    // The audit log records the paths without the token segment.
    let paths = [
        "/echo-url?chat_id=1",
        "/file/documents/file_1.pdf",
        "/file/documents/echo-url",
        "/sendMessage",
    ];
    // Records are written in batches: wait for all of them, not just the first.
    let mut records = String::new();
    for _ in 0..50 {
        records = env
            .cli(&["audit", "query", "--provider", "telegram", "--json"], "")
            .await
            .ok()
            .stdout;
        if paths.iter().all(|p| records.contains(&format!("\"{p}\""))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in paths {
        assert!(
            records.contains(&format!("\"{path}\"")),
            "{path}: {records}"
        );
    }
    broker.stop().await;
    let transcript = env.transcript();
    assert!(
        found_in(TELEGRAM_KEY, transcript.as_bytes()).is_empty(),
        "the bot token is in the logs or CLI output"
    );
    assert!(
        !transcript.contains(&token),
        "the full agent token was logged"
    );
    assert!(
        !transcript.contains(&downloader),
        "the full agent token was logged"
    );
}

#[tokio::test]
async fn bad_provider_entries_are_refused_naming_the_provider_and_the_field() {
    for (entry, expected) in [
        (
            "[providers.acme]\nauth = { scheme = \"header\", name = \"X-Key\" }\n",
            "provider `acme`: `base_url` is required",
        ),
        (
            "[providers.acme]\nbase_url = \"https://acme.example\"\nauth = { scheme = \"header\", name = \"X-Key\", template = \"Key\" }\n",
            "provider `acme`: `auth.template`",
        ),
        (
            "[providers.acme]\nbase_url = \"https://acme.example\"\nauth = { scheme = \"basic\", user = \"api\" }\n",
            "provider `acme`: `auth.user`",
        ),
        (
            "[providers.slack]\ntoken_in = [{ in = \"header\", name = \"bad name\" }]\n",
            "provider `slack`: `token_in.name`",
        ),
        (
            "[providers.acme]\nbase_url = \"http://acme.example\"\nauth = { scheme = \"query\", param = \"k\" }\n",
            "provider `acme`: `base_url`",
        ),
        (
            "[providers.acme]\nbase_url = \"https://acme.example\"\nauth = { scheme = \"carrier-pigeon\" }\n",
            "carrier-pigeon",
        ),
    ] {
        let env = Env::new(entry);
        let out = env.cli(&["provider", "list"], "").await;
        assert!(
            !out.status.success() && out.stderr.contains(expected),
            "{entry}: {out:?}"
        );
        let serve = env.cli(&["secret", "list"], "").await;
        assert!(!serve.status.success(), "{entry}: {serve:?}");
    }
    // A valid override shows in the listing.
    let env = Env::new(&config_for("http://127.0.0.1:9", ""));
    let out = env.cli(&["provider", "list"], "").await.ok();
    assert!(
        out.stdout.lines().any(|l| l.starts_with("telegram")
            && l.contains("built-in (config)")
            && l.contains("http://127.0.0.1:9")),
        "{}",
        out.stdout
    );
}
