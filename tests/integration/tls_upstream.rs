//! HTTPS upstreams: rustls with an extra CA from the config, HTTP/1.1 by default and
//! HTTP/2 where a provider opts in; an untrusted certificate is a 502, never a bypass.

use crate::support::http::send;
use crate::support::mock::MockUpstream;
use crate::support::tls::TestCa;
use crate::support::{Env, config_for};

async fn call(env: &Env) -> (crate::support::http::Reply, crate::support::Broker) {
    env.add_secret("k", "openai", "sk-REAL-over-tls").await;
    let token = env.create_token("k", &[]).await;
    let broker = env.serve().await;
    let reply = send(
        "POST",
        &broker.url("/api/openai/v1/chat/completions"),
        &[("authorization", &format!("Bearer {token}"))],
        "{}",
    )
    .await;
    (reply, broker)
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca_over_http1_and_http2() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(ca.acceptor.clone()).await;
    let base = format!("https://localhost:{}", mock.addr.port());
    for (http2, version) in [
        (false, hyper::Version::HTTP_11),
        (true, hyper::Version::HTTP_2),
    ] {
        let env = Env::new("");
        let ca_file = env.data_dir().join("ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        let extra = format!(
            "[upstream]\nextra_ca_file = \"{}\"\n[providers.openai]\nbase_url = \"{base}\"\nhttp2 = {http2}\n",
            ca_file.display()
        );
        std::fs::write(&env.config, extra).unwrap();
        let before = mock.requests().len();
        let (reply, broker) = call(&env).await;
        assert_eq!(reply.status, 200, "http2={http2}: {reply:?}");
        let seen = mock.requests();
        assert_eq!(seen.len(), before + 1);
        let req = seen.last().unwrap();
        assert_eq!(req.version, version);
        assert_eq!(req.header("authorization"), Some("Bearer sk-REAL-over-tls"));
        broker.stop().await;
    }
}

#[tokio::test]
async fn an_upstream_certificate_from_an_unknown_ca_is_refused_with_502() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(ca.acceptor.clone()).await;
    let env = Env::new(&config_for(
        &format!("https://localhost:{}", mock.addr.port()),
        "",
    ));
    let (reply, broker) = call(&env).await;
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (502, Some("upstream_unreachable"))
    );
    assert!(
        mock.requests().is_empty(),
        "no request may be sent over an unverified connection"
    );
    broker.stop().await;
}
