//! The operator CLI against a real data directory.

use crate::support::{Env, config_for};

const KEY: &str = "sk-cli-test-0123456789";

#[tokio::test]
async fn secrets_are_added_from_stdin_listed_without_values_and_removed_with_their_tokens() {
    let env = Env::new("");
    let added = env
        .cli(
            &["secret", "add", "main", "--provider", "openai"],
            &format!("{KEY}\n"),
        )
        .await
        .ok();
    assert!(
        added.stderr.contains("generated a new master key"),
        "{}",
        added.stderr
    );
    assert!(
        added.stderr.contains("token create --secret main"),
        "{}",
        added.stderr
    );

    let dup = env
        .cli(&["secret", "add", "main", "--provider", "openai"], KEY)
        .await;
    assert!(
        !dup.status.success() && dup.stderr.contains("already exists"),
        "{dup:?}"
    );
    let unknown = env
        .cli(&["secret", "add", "x", "--provider", "nope"], KEY)
        .await;
    assert!(
        !unknown.status.success() && unknown.stderr.contains("unknown provider"),
        "{unknown:?}"
    );
    let empty = env
        .cli(&["secret", "add", "y", "--provider", "openai"], "")
        .await;
    assert!(
        !empty.status.success() && empty.stderr.contains("no secret value"),
        "{empty:?}"
    );
    let spaced = env
        .cli(
            &["secret", "add", "z", "--provider", "openai"],
            "sk with spaces",
        )
        .await;
    assert!(!spaced.status.success(), "{spaced:?}");

    let table = env.cli(&["secret", "list"], "").await.ok();
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    assert!(table.stdout.contains("main") && table.stdout.contains("openai"));
    let json: serde_json::Value =
        serde_json::from_str(&env.cli(&["secret", "list", "--json"], "").await.ok().stdout)
            .unwrap();
    assert_eq!(json[0]["name"], "main");
    assert_eq!(json[0]["provider"], "openai");
    assert_eq!(json[0]["version"], 1);

    let token = env
        .create_token("main", &["--agent", "bot", "--ttl", "1h"])
        .await;
    assert!(token.starts_with("seks_openai_"));
    let tokens: serde_json::Value =
        serde_json::from_str(&env.cli(&["token", "list", "--json"], "").await.ok().stdout).unwrap();
    assert_eq!(tokens[0]["agent"], "bot");
    assert_eq!(tokens[0]["state"], "active");
    assert!(tokens[0]["expires_at"].is_string());
    let hint = tokens[0]["token"].as_str().unwrap();
    assert!(
        hint.ends_with('…') && token.starts_with(hint.trim_end_matches('…')) && hint.len() < 30,
        "{hint}"
    );

    let rm = env.cli(&["secret", "rm", "main"], "").await.ok();
    assert!(rm.stderr.contains("1 token"), "{}", rm.stderr);
    let tokens: serde_json::Value =
        serde_json::from_str(&env.cli(&["token", "list", "--json"], "").await.ok().stdout).unwrap();
    assert_eq!(tokens, serde_json::json!([]));
    let missing = env.cli(&["secret", "rm", "main"], "").await;
    assert!(
        !missing.status.success() && missing.stderr.contains("no secret named"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn tokens_are_revoked_once_and_need_an_existing_secret() {
    let env = Env::new("");
    env.add_secret("gh", "github", "ghp_example").await;
    let no_secret = env.cli(&["token", "create", "--secret", "nope"], "").await;
    assert!(
        !no_secret.status.success() && no_secret.stdout.is_empty(),
        "{no_secret:?}"
    );
    env.create_token("gh", &["--agent", "ci"]).await;
    let id = env.token_id("ci").await;
    env.cli(&["token", "revoke", &id], "").await.ok();
    let listed = env.cli(&["token", "list"], "").await.ok();
    assert!(listed.stdout.contains("revoked"), "{}", listed.stdout);
    let again = env.cli(&["token", "revoke", &id], "").await;
    assert!(
        !again.status.success() && again.stderr.contains("no active token"),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_different_master_key_or_a_lost_key_file_is_refused_clearly() {
    let env = Env::new("");
    env.add_secret("main", "openai", KEY).await;
    let other_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = env
        .cli_with_env(
            &["secret", "rotate", "main"],
            "new-value",
            &[("SEKS_MASTER_KEY", other_key)],
        )
        .await;
    assert!(
        !out.status.success() && out.stderr.contains("master key does not match"),
        "{out:?}"
    );
    assert!(!out.stderr.contains(other_key));

    std::fs::remove_file(env.data_dir().join("master.key")).unwrap();
    let lost = env.cli(&["secret", "rotate", "main"], "new-value").await;
    assert!(
        !lost.status.success() && lost.stderr.contains("no master key"),
        "{lost:?}"
    );
}

#[tokio::test]
async fn master_key_from_the_environment_is_used_and_no_key_file_is_written() {
    let env = Env::new("");
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let env_key = [("SEKS_MASTER_KEY", key)];
    env.cli_with_env(
        &["secret", "add", "main", "--provider", "openai"],
        KEY,
        &env_key,
    )
    .await
    .ok();
    env.cli_with_env(&["secret", "rotate", "main"], "sk-rotated", &env_key)
        .await
        .ok();
    assert!(!env.data_dir().join("master.key").exists());
}

#[tokio::test]
async fn serve_on_an_empty_store_prints_the_next_steps() {
    let env = Env::new(&config_for("http://127.0.0.1:9", ""));
    let broker = env.serve().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !env.transcript().contains("OpenAI(base_url=") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = env.transcript();
    assert!(out.contains("secret add"), "{out}");
    assert!(out.contains("token create"), "{out}");
    assert!(
        out.contains(&format!("base_url=\"{}/api/openai/v1\"", broker.base)),
        "{out}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_broken_config_file_is_reported_with_its_path() {
    let env = Env::new("listne = 1\n");
    let out = env.cli(&["secret", "list"], "").await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("seks.toml") && out.stderr.contains("listne"),
        "{}",
        out.stderr
    );
    let env = Env::new("[providers.openai]\nbase_url = \"http://example.com\"\n");
    let out = env
        .cli(&["secret", "add", "a", "--provider", "openai"], KEY)
        .await;
    assert!(
        !out.status.success() && out.stderr.contains("plain http"),
        "{out:?}"
    );
}

#[tokio::test]
async fn on_a_terminal_the_secret_is_read_from_a_hidden_prompt() {
    let mock = crate::support::mock::MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    let data_dir = env.data_dir().display().to_string();
    let config = env.config.display().to_string();
    let mut vars = vec![
        ("SEKS_DATA_DIR", data_dir.as_str()),
        ("SEKS_CONFIG", config.as_str()),
    ];
    vars.extend(env.store_url().map(|url| ("SEKS_STORE_URL", url)));
    let out = crate::support::run_python(
        "tty_secret.py",
        &[
            crate::support::seks_bin(),
            "typed",
            "sk-typed-at-the-prompt",
        ],
        &vars,
    )
    .await;
    assert!(out.status.success(), "{out:#?}");
    // The stored value is exactly what was typed: the upstream receives it.
    let token = env.create_token("typed", &[]).await;
    let broker = env.serve().await;
    let reply = crate::support::http::send(
        "GET",
        &broker.url("/api/openai/v1/models"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        mock.requests()[0].header("authorization"),
        Some("Bearer sk-typed-at-the-prompt")
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_store_password_given_as_a_url_parameter_is_masked_in_messages() {
    const PASSWORD: &str = "hunter2-in-the-query";
    let env = Env::new("");
    env.add_secret("main", "openai", KEY).await;
    // No server listens on port 1: both commands fail, naming the store they could not open.
    let url = format!("postgres://seks@127.0.0.1:1/seks?sslmode=disable&password={PASSWORD}");
    let opened = env
        .cli_with_env(&["secret", "list"], "", &[("SEKS_STORE_URL", &url)])
        .await;
    let encoded = url.replace("password=", "pass%77ord=");
    let migrated = env.cli(&["migrate", "--to", &encoded, "--json"], "").await;
    for out in [opened, migrated] {
        assert!(
            !out.status.success() && out.stderr.contains("127.0.0.1:1/seks"),
            "{out:?}"
        );
        assert!(!out.stderr.contains(PASSWORD), "{}", out.stderr);
        assert!(!out.stdout.contains(PASSWORD), "{}", out.stdout);
    }
}

#[tokio::test]
async fn output_to_a_reader_that_has_gone_ends_the_command_as_sigpipe_would_without_a_panic() {
    let env = Env::new("");
    // `seks provider list | head -0`: the pipe's reader is gone before the first line.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(crate::support::seks_bin())
        .args(["provider", "list"])
        .env("SEKS_DATA_DIR", env.data_dir())
        .env("SEKS_CONFIG", &env.config)
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
