//! Token validation and credential lookup, as the proxy does them for every request:
//! checking a token's shape and checksum and hashing it; resolving the hash to the token's
//! entry from the keyring's cache (warm) or from the store (cold: a token's first request
//! after start-up or a store change); handing out the decrypted credential with the
//! scrubber for its response. Stores of 1 and 10,000 tokens, 1 and 1,000 secrets.
//! Run: `cargo bench --bench keyring`.
//!
//! Writing the credential into the upstream request has a bench of its own
//! (`cargo bench --bench inject`).

use std::sync::Arc;

use secrecy::SecretString;
use seks::keyring::{Keyring, STALE_AFTER, TokenEntry};
use seks::ops::Ops;
use seks::ops::views::NewTokenRequest;
use seks::providers::Providers;
use seks::scrub::Redactor;
use seks::tokens;
use seks::vault::{Key, Vault};
use tokio::runtime::Runtime;

fn main() {
    divan::main();
}

/// A keyring over a fresh store of `secrets` openai secrets and `tokens` tokens spread
/// over them, synced once; with `sync_loop` it stays in step (fresh) as a broker's does.
struct Fixture {
    runtime: Runtime,
    keyring: Arc<Keyring>,
    tokens: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(secrets: usize, tokens: usize, sync_loop: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (keyring, texts) = runtime.block_on(async {
            let store = seks::store::Location::parse(None, dir.path())
                .unwrap()
                .open()
                .await
                .unwrap();
            let vault = Arc::new(Vault::new(Key::from_bytes([7; 32])));
            let ops = Ops::new(store.clone(), Providers::load(&Default::default()).unwrap());
            for i in 0..secrets {
                let value = format!("sk-bench-{i:05}-{}", tokens::random_base62(40));
                ops.add_secret(
                    &vault,
                    &format!("secret{i}"),
                    "openai",
                    &SecretString::from(value),
                )
                .await
                .unwrap();
            }
            let mut texts = Vec::with_capacity(tokens);
            for i in 0..tokens {
                let request = NewTokenRequest {
                    secret: format!("secret{}", i % secrets),
                    agent: "bench".into(),
                    policy: None,
                    policy_name: None,
                };
                texts.push(ops.create_token(&vault, &request).await.unwrap().token);
            }
            let keyring = Arc::new(Keyring::new(store, vault, Arc::new(Redactor::default())));
            keyring.sync().await.unwrap();
            (keyring, texts)
        });
        if sync_loop {
            runtime.spawn(keyring.clone().run_sync_loop());
        }
        Fixture {
            runtime,
            keyring,
            tokens: texts,
            _dir: dir,
        }
    }

    /// What the proxy does with the token text it found: parse, hash, resolve.
    fn validate(&self, text: &str) -> Arc<TokenEntry> {
        let parsed = tokens::parse(text).unwrap();
        self.runtime.block_on(self.keyring.token(&parsed)).unwrap()
    }
}

/// Shape, checksum and SHA-256 of a token: the check before any lookup.
#[divan::bench]
fn parse_and_hash(bencher: divan::Bencher) {
    let token = tokens::generate("openai");
    let text: &str = secrecy::ExposeSecret::expose_secret(&token);
    bencher.bench(|| tokens::parse(divan::black_box(text)).unwrap().hash());
}

/// A token already in the cache, with every token of the store cached beside it.
#[divan::bench(args = [1, 10_000], sample_count = 50)]
fn validate_warm(bencher: divan::Bencher, tokens: usize) {
    let f = Fixture::new(1, tokens, true);
    for text in &f.tokens {
        f.validate(text);
    }
    let text = f.tokens[tokens / 2].as_str();
    bencher.bench(|| f.validate(divan::black_box(text)));
}

/// A token looked up in the store (SQLite, by hash) and its entry built: the cache isn't
/// trusted once the last sync is older than `STALE_AFTER`, which is how a cold lookup is
/// reached here without changing the store.
#[divan::bench(args = [1, 10_000], sample_count = 50)]
fn validate_cold(bencher: divan::Bencher, tokens: usize) {
    let f = Fixture::new(1, tokens, false);
    std::thread::sleep(STALE_AFTER * 2);
    let text = f.tokens[tokens / 2].as_str();
    bencher.bench(|| f.validate(divan::black_box(text)));
}

/// The credential and response scrubber for a validated token's secret.
#[divan::bench(args = [1, 1000], sample_count = 50)]
fn credential(bencher: divan::Bencher, secrets: usize) {
    let f = Fixture::new(secrets, secrets, true);
    let entry = f.validate(&f.tokens[secrets / 2]);
    bencher.bench(|| {
        f.runtime
            .block_on(f.keyring.credential(divan::black_box(&entry.record)))
            .unwrap()
    });
}
