//! Secrets at rest: the signing secrets of subscriptions, sources and the
//! ops endpoint are sealed (AES-256-GCM) wherever a record is written — the
//! embedded store's files, and in cluster mode the log, its snapshots and
//! every node's view — under a key the operator provides
//! (`server.secrets_key`, or `WASMHOOK_SERVER_SECRETS_KEY`) or, without
//! one, a key generated into `<data>/secrets-key` (mode 0600) at first
//! start.
//!
//! A sealed value is `wh1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`;
//! the key id (the first 4 bytes of the key's SHA-256, hex) says which key
//! opens it, so that after a rotation records sealed with the previous key
//! still open (`server.previous_secrets_keys`) until the start re-seals
//! them with the new one. A value without the prefix is a secret written
//! before sealing existed: it is read as it is and sealed when written
//! again.
//!
//! The key is process-wide (records are (de)serialized by serde, which
//! takes no context): [`install`] sets it once at start. A process that
//! installed none (a unit test's store) writes secrets as they are.

use std::sync::OnceLock;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;

/// What marks a sealed value (version 1 of the format).
const PREFIX: &str = "wh1:";

/// One key, with its id.
pub struct Key {
    id: String,
    key: LessSafeKey,
    /// What a cluster's nodes sign the requests they forward to each
    /// other with (derived, so that no signature says anything of the key
    /// that seals secrets).
    forwarding: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish()
    }
}

/// Why a key or a sealed value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "a secrets key is 32 bytes, written as 64 hex digits or base64 (e.g. `openssl rand -hex 32`)"
    )]
    BadKey,
    #[error(
        "a secret is sealed with key {0}, which is neither server.secrets_key nor one of server.previous_secrets_keys"
    )]
    UnknownKey(String),
    #[error("a sealed secret does not open (damaged, or not sealed by this key)")]
    Damaged,
}

impl Key {
    /// A key from its text: 64 hex digits, or base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Key, SecretsError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .filter(|b| b.len() == 32)
            .ok_or(SecretsError::BadKey)?;
        let forwarding = sha2::Sha256::new()
            .chain_update(b"wasmhook: forwarded requests, v1\0")
            .chain_update(&bytes)
            .finalize()
            .into();
        Ok(Key {
            id: hex::encode(&sha2::Sha256::digest(&bytes)[..4]),
            forwarding,
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretsError::BadKey)?,
            ),
        })
    }

    /// A fresh random key, as text [`Key::parse`] reads.
    pub fn generate() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key a cluster's nodes sign forwarded requests with.
    pub fn forwarding(&self) -> &[u8; 32] {
        &self.forwarding
    }

    fn seal(&self, plain: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.id.as_bytes()),
                &mut sealed,
            )
            .expect("a secret is far below AES-GCM's size limit");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}:{}",
            self.id,
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        )
    }

    fn open(&self, body: &str) -> Result<String, SecretsError> {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| SecretsError::Damaged)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretsError::Damaged);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::Damaged)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(self.id.as_bytes()), &mut sealed)
            .map_err(|_| SecretsError::Damaged)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretsError::Damaged)
    }
}

/// The current key and the previous ones that still open old records.
#[derive(Debug)]
pub struct Keys {
    pub current: Key,
    pub previous: Vec<Key>,
}

impl Keys {
    /// `plain` sealed with the current key.
    pub fn seal(&self, plain: &str) -> String {
        self.current.seal(plain)
    }

    /// The secret in `stored`: opened with the key its id names, or as it
    /// is when it was never sealed.
    pub fn open(&self, stored: &str) -> Result<String, SecretsError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, body) = rest.split_once(':').ok_or(SecretsError::Damaged)?;
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretsError::UnknownKey(id.to_string()))?
            .open(body)
    }

    /// Whether `stored` is sealed with the current key (else the start
    /// re-seals it).
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(id, _)| id == self.current.id)
    }
}

static KEYS: OnceLock<Keys> = OnceLock::new();

/// Sets the process's keys (once; a second call with other keys is an
/// error, since records written under the first would no longer open).
pub fn install(keys: Keys) -> Result<(), String> {
    let id = keys.current.id.clone();
    match KEYS.set(keys) {
        Ok(()) => Ok(()),
        Err(_) if KEYS.get().is_some_and(|k| k.current.id == id) => Ok(()),
        Err(_) => Err("the secrets key is already set to another key in this process".into()),
    }
}

/// The process's keys, if installed.
pub fn keys() -> Option<&'static Keys> {
    KEYS.get()
}

/// `#[serde(with = "crate::secrets::sealed")]` on a secret's field.
pub mod sealed {
    use super::*;

    pub fn serialize<S: Serializer>(plain: &str, s: S) -> Result<S::Ok, S::Error> {
        match keys() {
            Some(keys) => keys.seal(plain).serialize(s),
            None => plain.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let stored = String::deserialize(d)?;
        if !stored.starts_with(PREFIX) {
            return Ok(stored);
        }
        let keys = keys().ok_or_else(|| {
            serde::de::Error::custom("a sealed secret, and no secrets key is installed")
        })?;
        keys.open(&stored).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(default, with = "crate::secrets::sealed_opt")]` on an
/// optional secret's field (a client certificate's key).
pub mod sealed_opt {
    use super::*;

    pub fn serialize<S: Serializer>(plain: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match plain {
            Some(p) => super::sealed::serialize(p, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        #[derive(Deserialize)]
        struct Sealed(#[serde(with = "super::sealed")] String);
        Ok(Option::<Sealed>::deserialize(d)?.map(|s| s.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::parse(&Key::generate()).unwrap()
    }

    #[test]
    fn sealed_secrets_open_with_their_key_only() {
        let keys = Keys {
            current: key(),
            previous: vec![],
        };
        let sealed = keys.seal("whsec_abc");
        assert!(sealed.starts_with("wh1:"), "{sealed}");
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(keys.seal("whsec_abc"), sealed, "a fresh nonce each time");
        assert_eq!(keys.open(&sealed).unwrap(), "whsec_abc");
        assert!(keys.is_current(&sealed));
        assert_eq!(keys.open("plain-from-before").unwrap(), "plain-from-before");
        assert!(!keys.is_current("plain-from-before"));

        // After a rotation: the old key opens what it sealed while listed.
        let rotated = Keys {
            current: key(),
            previous: vec![Key::parse(&hex::encode([0u8; 32])).unwrap()],
        };
        assert!(matches!(
            rotated.open(&sealed),
            Err(SecretsError::UnknownKey(_))
        ));
        let old = Keys {
            current: Key::parse(&hex::encode([0u8; 32])).unwrap(),
            previous: vec![],
        };
        let by_old = old.seal("s");
        assert_eq!(rotated.open(&by_old).unwrap(), "s");
        assert!(!rotated.is_current(&by_old));

        // Tampering is refused, never a wrong secret.
        let mut damaged = sealed.clone();
        damaged.pop();
        damaged.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(keys.open(&damaged), Err(SecretsError::Damaged));
    }

    #[test]
    fn keys_are_32_bytes_in_hex_or_base64() {
        assert!(Key::parse(&"ab".repeat(32)).is_ok());
        assert!(Key::parse(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).is_ok());
        assert_eq!(Key::parse("short").unwrap_err(), SecretsError::BadKey);
        assert_eq!(
            Key::parse(&"ab".repeat(16)).unwrap_err(),
            SecretsError::BadKey
        );
    }
}
