//! Policy: whether a known token may make this request right now.
//!
//! Today a token is valid for every path of its provider until it expires or is revoked;
//! per-token rules (paths, models, rates, budgets, approval) plug in here.

use crate::store::TokenRecord;

/// Why policy refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The token was revoked at this time.
    #[error("token was revoked")]
    Revoked(i64),
    /// The token expired at this time.
    #[error("token has expired")]
    Expired(i64),
}

/// Check a token against its policy at Unix time `now`.
pub fn check(token: &TokenRecord, now: i64) -> Result<(), Denial> {
    if let Some(at) = token.revoked_at {
        return Err(Denial::Revoked(at));
    }
    match token.expires_at {
        Some(at) if now >= at => Err(Denial::Expired(at)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: Option<i64>, revoked_at: Option<i64>) -> TokenRecord {
        TokenRecord {
            id: "tok_1".into(),
            tenant: "default".into(),
            agent: "a".into(),
            secret_id: "sec_1".into(),
            secret_name: "s".into(),
            provider: "openai".into(),
            hint: "seks_openai_abcd…".into(),
            expires_at,
            revoked_at,
            created_at: 0,
            last_used_at: None,
        }
    }

    #[test]
    fn expiry_is_exclusive_and_revocation_wins() {
        assert_eq!(check(&token(None, None), 100), Ok(()));
        assert_eq!(check(&token(Some(101), None), 100), Ok(()));
        assert_eq!(
            check(&token(Some(100), None), 100),
            Err(Denial::Expired(100))
        );
        assert_eq!(
            check(&token(Some(101), Some(50)), 100),
            Err(Denial::Revoked(50))
        );
    }
}
