//! The one seam where SEKS touches cryptographic primitives (aws-lc-rs).

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use zeroize::Zeroizing;

/// Length of every symmetric key SEKS uses (AES-256).
pub const KEY_LEN: usize = 32;

/// An AEAD operation failed: wrong key, altered ciphertext or mismatched associated data.
#[derive(Debug, thiserror::Error)]
#[error("authenticated encryption failed (wrong key, or the data was altered)")]
pub struct CryptoError;

/// A 256-bit symmetric key, wiped from memory on drop.
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl Key {
    /// Wrap raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Key(Zeroizing::new(bytes))
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        crate::tokens::fill_random(bytes.as_mut());
        Key(bytes)
    }

    /// The raw bytes, for wrapping under another key or writing a key file.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derive a subkey with HKDF-SHA256; `salt` names the purpose, `info` the context.
    pub fn derive(&self, salt: &[u8], info: &[u8]) -> Key {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        Salt::new(HKDF_SHA256, salt)
            .extract(self.0.as_ref())
            .expand(&[info], HKDF_SHA256)
            .and_then(|okm| okm.fill(out.as_mut()))
            // Expanding 32 bytes from SHA-256 is always within HKDF's output limit.
            .expect("HKDF-SHA256 expansion of 32 bytes");
        Key(out)
    }

    /// HMAC-SHA256 of `message` under this key.
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.0.as_ref());
        let tag = aws_lc_rs::hmac::sign(&key, message);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Encrypt `plaintext` with AES-256-GCM under a random nonce; returns (nonce, ciphertext‖tag).
    pub fn seal(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), CryptoError> {
        let key =
            RandomizedNonceKey::new(&AES_256_GCM, self.0.as_ref()).map_err(|_| CryptoError)?;
        let mut in_out = plaintext.to_vec();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError)?;
        Ok((*nonce.as_ref(), in_out))
    }

    /// Decrypt and authenticate what [`Key::seal`] produced under the same associated data.
    pub fn open(
        &self,
        nonce: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key =
            RandomizedNonceKey::new(&AES_256_GCM, self.0.as_ref()).map_err(|_| CryptoError)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError)?;
        let mut in_out = Zeroizing::new(ciphertext.to_vec());
        let len = key
            .open_in_place(nonce, Aad::from(aad), in_out.as_mut_slice())
            .map_err(|_| CryptoError)?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_binds_the_associated_data() {
        let key = Key::random();
        let (nonce, ct) = key.seal(b"tenant/secret/1", b"sk-real").unwrap();
        assert_ne!(&ct[..7], b"sk-real");
        assert_eq!(
            key.open(&nonce, b"tenant/secret/1", &ct)
                .unwrap()
                .as_slice(),
            b"sk-real"
        );
        assert!(key.open(&nonce, b"tenant/secret/2", &ct).is_err());
        assert!(Key::random().open(&nonce, b"tenant/secret/1", &ct).is_err());
    }

    #[test]
    fn derived_keys_depend_on_salt_and_info() {
        let master = Key::from_bytes([7; KEY_LEN]);
        let a = master.derive(b"kek", b"default");
        assert_eq!(a.expose(), master.derive(b"kek", b"default").expose());
        assert_ne!(a.expose(), master.derive(b"kek", b"other").expose());
        assert_ne!(a.expose(), master.derive(b"check", b"default").expose());
        assert_eq!(format!("{a:?}"), "Key([REDACTED])");
    }
}
