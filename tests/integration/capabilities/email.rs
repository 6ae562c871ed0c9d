//! `kind = "email"` against a real SMTP server (aiosmtpd) that requires STARTTLS and checks
//! the stored login, the server named in the same sealed secret.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{audit_records, call, code, pending_approval};
use crate::support::tls::TestCa;
use crate::support::{Env, assert_never_leaked, python};

const SMTP_USER: &str = "bot@example.com";
const SMTP_PASSWORD: &str = "smtp-CANARY/pass+7f3a~e2c4=91bd";

/// aiosmtpd on loopback, serving STARTTLS with the test CA's certificate.
struct SmtpServer {
    _child: Child,
    port: u16,
    events: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    async fn start(ca: &TestCa) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, events) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("events.jsonl"),
        );
        std::fs::write(&cert, &ca.leaf_pem).unwrap();
        std::fs::write(&key, &ca.leaf_key_pem).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/smtp_server.py");
        let mut child = Command::new(python())
            .arg(script)
            .args([&events, &cert, &key])
            .args([SMTP_USER, SMTP_PASSWORD])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the SMTP server did not start")
            .unwrap()
            .expect("the SMTP server exited");
        let port = ready.strip_prefix("READY ").unwrap().parse().unwrap();
        SmtpServer {
            _child: child,
            port,
            events,
            _dir: dir,
        }
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event"] == kind)
            .collect()
    }
}

/// The bot's account on `smtp` with `password`, as stored: the server and the password
/// sealed together, STARTTLS to 127.0.0.1.
fn account(smtp: &SmtpServer, password: &str) -> String {
    let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    format!(
        "smtp://{}:{}@127.0.0.1:{}",
        encode(SMTP_USER),
        encode(password),
        smtp.port
    )
}

/// An environment that trusts `ca` for upstreams and defines `email_ops` (mail to anyone at
/// example.com through the secret `smtp-ops`) and `extra`; the CA file lives as long as the
/// directory returned.
fn email_env(ca: &TestCa, extra: &str) -> (Env, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let env = Env::new(&format!(
        r#"
[upstream]
extra_ca_file = "{ca}"

[capabilities.email_ops]
kind = "email"
description = "Send an email to someone at example.com"
secret = "smtp-ops"
from = "bot@example.com"
allowed_to = ["*@example.com"]
{extra}"#,
        ca = ca_file.display()
    ));
    (env, files)
}

#[tokio::test]
async fn email_is_sent_through_a_real_smtp_server_and_only_to_allowed_recipients() {
    let ca = TestCa::new();
    let smtp = SmtpServer::start(&ca).await;
    let (env, _files) = email_env(
        &ca,
        r#"
[capabilities.email_wrong_password]
kind = "email"
description = "The same server, with a password it doesn't take"
secret = "smtp-wrong"
from = "bot@example.com"
to = ["ops@example.com"]
"#,
    );
    env.add_secret("smtp-ops", "smtp", &account(&smtp, SMTP_PASSWORD))
        .await;
    env.add_secret(
        "smtp-wrong",
        "smtp",
        &account(&smtp, "not-the-password-0000"),
    )
    .await;
    // Neither a secret nor a definition can send the password in clear text, or elsewhere.
    let clear = env
        .cli(
            &["secret", "add", "smtp-clear", "--provider", "smtp"],
            &format!("smtp://bot:{}@mail.example.com?tls=none", "x".repeat(20)),
        )
        .await;
    assert!(
        !clear.status.success() && clear.stderr.contains("clear text"),
        "{clear:?}"
    );
    let redirect = env.data_dir().join("redirect.toml");
    std::fs::write(
        &redirect,
        "[capabilities.redirect]\nkind = \"email\"\ndescription = \"d\"\nsecret = \"smtp-ops\"\n\
         from = \"bot@example.com\"\nto = [\"ops@example.com\"]\n\
         smtp = { host = \"mail.attacker.example\", username = \"x\", tls = \"tls\" }\n",
    )
    .unwrap();
    let refused = env
        .cli(&["capability", "add", redirect.to_str().unwrap()], "")
        .await;
    assert!(
        !refused.status.success() && refused.stderr.contains("smtp"),
        "{refused:?}"
    );
    // The agent's token is for another provider: a policy, not a provider, grants capabilities.
    env.add_secret("main", "openai", "sk-openai-unused-1234567")
        .await;
    let token = env
        .create_token(
            "main",
            &[
                "--agent",
                "mailer",
                "--capability",
                "email_ops",
                "--capability",
                "email_wrong_password",
            ],
        )
        .await;
    let bystander = env.create_token("main", &["--agent", "bystander"]).await;
    let broker = env.serve().await;
    let mut responses = Vec::new();

    let sent = call(
        &broker,
        &token,
        "email_ops",
        &json!({"subject": "Disk full on db-1", "body": "db-1 is at 95%.", "to": ["ops@example.com"]}),
        &mut responses,
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(sent.json()["sent"], true);
    assert_eq!(sent.json()["to"], json!(["ops@example.com"]));
    let messages = smtp.events("message");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["from"], "bot@example.com");
    assert_eq!(m["to"], json!(["ops@example.com"]));
    let data = m["data"].as_str().unwrap();
    assert!(
        data.contains("Subject: Disk full on db-1") && data.contains("db-1 is at 95%."),
        "{data}"
    );

    // Recipients outside the allow-list, and malformed arguments, never reach the server.
    let greetings = smtp.events("ehlo").len();
    for to in ["evil@attacker.example", "ops@example.com.attacker.example"] {
        let refused = call(
            &broker,
            &token,
            "email_ops",
            &json!({"subject": "s", "body": "b", "to": [to]}),
            &mut responses,
        )
        .await;
        assert_eq!(
            (refused.status, code(&refused).as_str()),
            (403, "argument_not_allowed"),
            "{to}"
        );
        assert!(
            refused.body.contains(to),
            "the agent is told which: {refused:?}"
        );
    }
    let bad = call(
        &broker,
        &token,
        "email_ops",
        &json!({"body": "b", "to": ["ops@example.com"]}),
        &mut responses,
    )
    .await;
    assert_eq!((bad.status, code(&bad).as_str()), (400, "bad_arguments"));
    assert!(bad.body.contains("/subject"), "{bad:?}");
    assert_eq!(
        smtp.events("ehlo").len(),
        greetings,
        "no SMTP connection was made"
    );

    // The server checks the login: a wrong stored password is refused by it.
    let wrong = call(
        &broker,
        &token,
        "email_wrong_password",
        &json!({"subject": "s", "body": "b"}),
        &mut responses,
    )
    .await;
    assert_eq!(
        (wrong.status, code(&wrong).as_str()),
        (502, "backend_refused"),
        "{wrong:?}"
    );
    assert!(!smtp.events("auth_failed").is_empty());
    assert_eq!(smtp.events("message").len(), 1);

    // A token whose policy doesn't list the capability can't use it, nor learn it exists.
    let denied = call(
        &broker,
        &bystander,
        "email_ops",
        &json!({"subject": "s", "body": "b", "to": ["ops@example.com"]}),
        &mut responses,
    )
    .await;
    assert_eq!(
        (denied.status, code(&denied).as_str()),
        (404, "unknown_capability")
    );

    let records = audit_records(&env, |r| {
        r.iter().filter(|r| r["capability"].is_string()).count() >= 6
    })
    .await;
    let first = records
        .iter()
        .find(|r| r["capability"] == "email_ops" && r["status"] == 200)
        .expect("the sent message is audited");
    assert_eq!(first["agent"], "mailer");
    assert_eq!(first["path"], "/v1/capabilities/email_ops");
    let arguments = first["arguments"].as_str().unwrap();
    assert!(
        arguments.contains("Disk full on db-1") && arguments.contains("ops@example.com"),
        "{arguments}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["error"] == "argument_not_allowed" && r["decision"] == "denied")
    );
    broker.stop().await;
    assert_never_leaked(&env, SMTP_PASSWORD, &responses);
}

#[tokio::test]
async fn a_recipient_at_the_allowed_domain_cannot_route_the_message_to_another() {
    let ca = TestCa::new();
    let smtp = SmtpServer::start(&ca).await;
    let (env, _files) = email_env(&ca, "");
    env.add_secret("smtp-ops", "smtp", &account(&smtp, SMTP_PASSWORD))
        .await;
    let token = env
        .create_token("smtp-ops", &["--capability", "email_ops"])
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();

    // Relays read these as "pass it on to attacker.example" (Postfix rewrites the percent
    // form for its own domains by default): at example.com in syntax only.
    for to in [
        "evil%attacker.example@example.com",
        "attacker.example!evil@example.com",
        "\"evil@attacker.example\"@example.com",
    ] {
        let refused = call(
            &broker,
            &token,
            "email_ops",
            &json!({"subject": "s", "body": "b", "to": [to]}),
            &mut responses,
        )
        .await;
        assert_eq!(
            (refused.status, code(&refused).as_str()),
            (403, "argument_not_allowed"),
            "{to}: {refused:?}, the server got {:?}",
            smtp.events("message")
        );
    }
    assert!(
        smtp.events("ehlo").is_empty(),
        "no SMTP connection was made"
    );
    let sent = call(
        &broker,
        &token,
        "email_ops",
        &json!({"subject": "s", "body": "b", "to": ["ops+alerts@example.com"]}),
        &mut responses,
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    broker.stop().await;
    assert_never_leaked(&env, SMTP_PASSWORD, &responses);
}

#[tokio::test]
async fn the_approver_sees_every_recipient_of_a_held_email() {
    let env = Env::new(
        r#"
[capabilities.email_team]
kind = "email"
description = "Send an email to colleagues"
secret = "smtp-ops"
from = "bot@example.com"
allowed_to = ["*@example.com"]
max_recipients = 20
require_approval = true
"#,
    );
    // Nothing is sent: the call is denied while held.
    env.add_secret(
        "smtp-ops",
        "smtp",
        "smtp://bot:never-used-password-1@127.0.0.1:9?tls=none",
    )
    .await;
    let token = env
        .create_token("smtp-ops", &["--capability", "email_team"])
        .await;
    let broker = std::sync::Arc::new(env.serve().await);
    let mut to: Vec<String> = (1..=10)
        .map(|i| format!("colleague{i}@example.com"))
        .collect();
    to.push("leak-target@example.com".to_owned());
    let (b, t) = (broker.clone(), token.clone());
    let args = json!({"subject": "Notes", "body": "Today's notes", "to": to});
    let held =
        tokio::spawn(async move { call(&b, &t, "email_team", &args, &mut Vec::new()).await });
    let pending = pending_approval(&env).await;
    let shown = pending["request"]["arguments"].as_str().unwrap().to_owned();
    let id = pending["id"].as_str().unwrap();
    env.cli(&["approvals", "deny", id], "").await.ok();
    let denied = held.await.unwrap();
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(shown.contains("leak-target@example.com"), "{shown}");
}

#[tokio::test]
async fn line_breaks_in_a_message_cannot_end_it_early() {
    use base64::Engine;
    let ca = TestCa::new();
    let smtp = SmtpServer::start(&ca).await;
    let (env, _files) = email_env(&ca, "max_attachments = 1\n");
    env.add_secret("smtp-ops", "smtp", &account(&smtp, SMTP_PASSWORD))
        .await;
    let token = env
        .create_token("smtp-ops", &["--capability", "email_ops"])
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();
    // A dot alone between a bare CR or LF and a line break is the end of the message to
    // some servers (SMTP smuggling): what follows would be a second message, to anyone.
    let smuggled = "MAIL FROM:<bot@example.com>\r\nRCPT TO:<evil@attacker.example>\r\nDATA\r\n";
    let attachment = format!("totals\n.\r\n{smuggled}");
    let sent = call(
        &broker,
        &token,
        "email_ops",
        &json!({
            "subject": "Report",
            "body": format!("See attached\r.\r{smuggled}"),
            "to": ["ops@example.com"],
            "attachments": [{
                "filename": "report.txt",
                "content_type": "text/plain",
                "content_base64": base64::engine::general_purpose::STANDARD.encode(attachment),
            }],
        }),
        &mut responses,
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    let messages = smtp.events("message");
    let data = messages[0]["data"].as_str().unwrap();
    let bytes = data.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let bare_lf = b == b'\n' && (i == 0 || bytes[i - 1] != b'\r');
        let bare_cr = b == b'\r' && bytes.get(i + 1) != Some(&b'\n');
        assert!(!bare_lf && !bare_cr, "a bare line break at {i}: {data:?}");
    }
    assert!(data.contains("Content-Transfer-Encoding: base64"), "{data}");
    broker.stop().await;
    assert_never_leaked(&env, SMTP_PASSWORD, &responses);
}

/// A sloppy mail server on loopback, without TLS: it offers AUTH PLAIN and refuses every
/// login, quoting back the credentials it was sent. Returns its port.
async fn echoing_smtp_server() -> u16 {
    use base64::Engine;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sloppy ESMTP\r\n").await.ok();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = if line.starts_with("EHLO") {
                        "250-sloppy\r\n250 AUTH PLAIN\r\n".to_owned()
                    } else if let Some(sent) = line.strip_prefix("AUTH PLAIN ") {
                        let login = base64::engine::general_purpose::STANDARD
                            .decode(sent)
                            .unwrap_or_default();
                        let login = String::from_utf8_lossy(&login).replace('\0', " ");
                        format!("535 5.7.8 no such login:{login}\r\n")
                    } else if line == "QUIT" {
                        "221 bye\r\n".to_owned()
                    } else {
                        "502 5.5.2 unknown command\r\n".to_owned()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_mail_server_quoting_the_login_back_never_shows_the_password() {
    let port = echoing_smtp_server().await;
    let env = Env::new(
        "[capabilities.email_echo]\nkind = \"email\"\ndescription = \"d\"\nsecret = \"smtp-echo\"\n\
         from = \"bot@example.com\"\nto = [\"ops@example.com\"]\n",
    );
    // A password too short to be masked on its own would be shown as the server quotes it.
    let short = env
        .cli(
            &["secret", "add", "smtp-echo", "--provider", "smtp"],
            &format!("smtp://bot:pw12345@127.0.0.1:{port}?tls=none"),
        )
        .await;
    assert!(
        !short.status.success() && short.stderr.contains("password is shorter"),
        "{short:?}"
    );
    let password = "echoed-Pass-4c1e9";
    env.add_secret(
        "smtp-echo",
        "smtp",
        &format!("smtp://bot:{password}@127.0.0.1:{port}?tls=none"),
    )
    .await;
    let token = env
        .create_token("smtp-echo", &["--capability", "email_echo"])
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();
    let refused = call(
        &broker,
        &token,
        "email_echo",
        &json!({"subject": "s", "body": "b"}),
        &mut responses,
    )
    .await;
    assert_eq!(
        (refused.status, code(&refused).as_str()),
        (502, "backend_refused"),
        "{refused:?}"
    );
    assert!(refused.body.contains("no such login: bot *"), "{refused:?}");
    broker.stop().await;
    assert_never_leaked(&env, password, &responses);
}
