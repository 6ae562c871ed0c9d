//! The broker's certificate authority: agents trust it (`seks ca export`) so the forward
//! proxy can terminate their TLS with a certificate for the host they asked for.
//!
//! The CA is made on first use (ECDSA P-256, ten years) and kept in the store's meta table:
//! its certificate in the clear, its private key sealed by the vault like a secret, so a
//! stolen database can't mint certificates. Leaf certificates are short-lived (a day), made
//! per host on demand and cached until they near their end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::store::{DEFAULT_TENANT, Store, StoreError};
use crate::vault::{SealedSecret, SecretIdentity, Vault, VaultError};

/// Meta key under which the CA is stored.
pub const META_FORWARD_CA: &str = "forward_ca";
/// The identity the CA key is sealed under: no secret row has this id or an empty provider,
/// so neither can be swapped for the other.
const SEAL_ID: SecretIdentity<'static> = SecretIdentity {
    tenant: DEFAULT_TENANT,
    secret_id: "forward_ca_key",
    version: 1,
    provider: "",
    name: None,
};
/// How long the CA certificate is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf certificate is valid.
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A cached leaf is replaced once it has less than this left.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(6 * 3600);
/// Leaf certificates may start this far in the past, for clients whose clock is behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Leaves cached at most; past this the cache starts over.
const MAX_LEAVES: usize = 4096;

/// The CA could not be loaded, made or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key could not be sealed or opened (wrong master key, altered row).
    #[error("the forward proxy's CA key: {0}")]
    Vault(#[from] VaultError),
    /// A certificate could not be made (e.g. a host name that isn't one).
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the key.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The stored CA can't be read.
    #[error("the stored forward-proxy CA is unreadable: {0}")]
    Corrupt(&'static str),
}

/// The CA as stored in the meta table.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    /// The subject's common name, from which the issuer is rebuilt.
    common_name: String,
    /// The certificate agents trust.
    cert_pem: String,
    /// The PKCS#8 private key (base64), sealed.
    key: SealedSecret,
}

impl StoredCa {
    fn parse(text: &str) -> Result<Self, CaError> {
        serde_json::from_str(text).map_err(|_| CaError::Corrupt("not the expected JSON"))
    }

    fn encode(&self) -> Result<String, CaError> {
        serde_json::to_string(self).map_err(|_| CaError::Corrupt("could not encode the CA"))
    }
}

/// A leaf certificate and when to replace it.
struct Leaf {
    key: Arc<CertifiedKey>,
    renew_at: Instant,
}

/// The broker's CA and its cache of leaf certificates.
pub struct BrokerCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    leaves: Mutex<HashMap<String, Leaf>>,
    crypto: Arc<CryptoProvider>,
}

impl std::fmt::Debug for BrokerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerCa([REDACTED])")
    }
}

/// The CA certificate's parameters, minus validity and serial: what the issuer is rebuilt
/// from, so leaves name exactly the subject and key identifier of the stored certificate.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "SEKS");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    crate::tokens::fill_random(&mut bytes);
    // Positive as DER reads it, and never with a leading zero byte to strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

impl BrokerCa {
    /// The store's CA, made and stored first if there is none (two brokers starting at once
    /// agree on the first one stored).
    pub async fn load_or_create(store: &dyn Store, vault: &Vault) -> Result<Self, CaError> {
        let text = match store.meta(META_FORWARD_CA).await? {
            Some(text) => text,
            None => {
                let made = Self::make(vault)?;
                store
                    .init_sealed_meta(META_FORWARD_CA, &made, vault.version())
                    .await?
            }
        };
        Self::open(&text, vault)
    }

    /// A new CA, as stored.
    fn make(vault: &Vault) -> Result<String, CaError> {
        let common_name = format!("SEKS broker CA {}", crate::tokens::random_base62(8));
        let mut params = ca_params(&common_name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(24 * 3600);
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        let der = Zeroizing::new(key.serialize_der());
        let sealed = vault.seal(SEAL_ID, &SecretString::from(BASE64.encode(der.as_slice())))?;
        let stored = StoredCa {
            common_name,
            cert_pem: cert.pem(),
            key: sealed,
        };
        stored.encode()
    }

    /// The stored CA `text` with its key's data key wrapped under `to` instead of `from`
    /// (a master-key rotation).
    pub fn rewrapped(text: &str, from: &Vault, to: &Vault) -> Result<String, CaError> {
        let mut stored = StoredCa::parse(text)?;
        stored.key = from.rewrap(SEAL_ID, &stored.key, to)?;
        stored.encode()
    }

    fn open(text: &str, vault: &Vault) -> Result<Self, CaError> {
        let stored = StoredCa::parse(text)?;
        let encoded = vault.open(SEAL_ID, &stored.key)?;
        let der = Zeroizing::new(
            BASE64
                .decode(encoded.expose_secret())
                .map_err(|_| CaError::Corrupt("the key is not base64"))?,
        );
        let key = KeyPair::try_from(der.as_slice())?;
        Ok(BrokerCa {
            issuer: Issuer::new(ca_params(&stored.common_name), key),
            cert_pem: stored.cert_pem,
            leaves: Mutex::default(),
            crypto: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        })
    }

    /// The CA certificate (PEM), for agents' trust stores.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate and key for `host` (a DNS name or an IP address), signed by the CA.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let now = Instant::now();
        if let Some(leaf) = self.cache().get(host)
            && leaf.renew_at > now
        {
            return Ok(leaf.key.clone());
        }
        // Made outside the lock: two connections racing for a new host make two, harmlessly.
        let key = self.make_leaf(host)?;
        let mut cache = self.cache();
        if cache.len() >= MAX_LEAVES {
            cache.clear();
        }
        cache.insert(
            host.to_owned(),
            Leaf {
                key: key.clone(),
                renew_at: now + (LEAF_LIFETIME - LEAF_RENEW_BEFORE),
            },
        );
        Ok(key)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Leaf>> {
        self.leaves.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn make_leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let mut params = CertificateParams::new(vec![host.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, host);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_LIFETIME;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(
            vec![CertificateDer::from(cert.der().to_vec())],
            private,
            &self.crypto,
        )?;
        Ok(Arc::new(certified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Key;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls_pki_types::pem::PemObject;

    fn verify(ca_pem: &str, leaf: &CertifiedKey, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[tokio::test]
    async fn the_ca_is_made_once_sealed_and_signs_leaves_clients_accept() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Location::parse(None, dir.path())
            .unwrap()
            .open()
            .await
            .unwrap();
        let vault = Vault::new(Key::from_bytes([3; 32]));
        let ca = BrokerCa::load_or_create(store.as_ref(), &vault)
            .await
            .unwrap();
        let again = BrokerCa::load_or_create(store.as_ref(), &vault)
            .await
            .unwrap();
        assert_eq!(ca.certificate_pem(), again.certificate_pem());
        assert!(
            ca.certificate_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );

        // A CA reloaded from the store signs leaves that chain to the stored certificate.
        for (host, name) in [
            ("api.openai.com", "api.openai.com"),
            ("127.0.0.1", "127.0.0.1"),
        ] {
            let leaf = again.leaf(host).unwrap();
            verify(ca.certificate_pem(), &leaf, name).unwrap();
        }
        let leaf = again.leaf("api.openai.com").unwrap();
        assert!(
            Arc::ptr_eq(&leaf, &again.leaf("api.openai.com").unwrap()),
            "cached"
        );
        assert!(verify(ca.certificate_pem(), &leaf, "evil.example").is_err());

        // The stored row holds no key in the clear, and opens only with the master key.
        let stored = store.meta(META_FORWARD_CA).await.unwrap().unwrap();
        assert!(!stored.contains("PRIVATE KEY"));
        let other = Vault::new(Key::from_bytes([4; 32]));
        assert!(matches!(
            BrokerCa::load_or_create(store.as_ref(), &other).await,
            Err(CaError::Vault(_))
        ));
    }
}
