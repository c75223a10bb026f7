//! What the API shows of a secret (a subscription's or a source's): the
//! current one and those still in their grace period, with the public key
//! of an asymmetric one.

use jiff::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;

use crate::sign;

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    /// The secret that signs from now on.
    pub secret: String,
    /// Its `whpk_…` public key, when it is an asymmetric (`whsk_…`) key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Older secrets that still sign too, and until when.
    pub previous: Vec<PreviousSecret>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviousSecret {
    pub secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub expires_at: Option<Timestamp>,
}

/// The current secret and those still in their grace period (a
/// subscription's or a source's).
pub(super) fn secret_view(secrets: &[crate::store::Secret], now: Timestamp) -> SecretView {
    SecretView {
        secret: secrets
            .first()
            .map(|x| x.secret.clone())
            .unwrap_or_default(),
        public_key: secrets.first().and_then(|x| sign::public_key(&x.secret)),
        previous: secrets
            .iter()
            .skip(1)
            .filter(|x| x.expires_at.is_none_or(|t| t > now))
            .map(|x| PreviousSecret {
                public_key: sign::public_key(&x.secret),
                secret: x.secret.clone(),
                expires_at: x.expires_at,
            })
            .collect(),
    }
}
