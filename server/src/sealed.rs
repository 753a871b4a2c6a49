//! Secrets at rest: the server's secrets sealed in the database under a key kept
//! outside it.
//!
//! The database holds two kinds of secret that must not leak with a copy of it: the
//! **server key** (the Ed25519 secret in `server_keys` that signs stream heads and
//! answers, and from which the participant-token key is derived) and each webhook
//! endpoint's **signing secret** (`webhooks.secret`, and the retired ones still signing
//! in `webhooks.previous_secrets`). Given a **secrets key** — 32 random bytes, written as
//! 64 hex digits, handed to every server process with `--secrets-key-file PATH` or
//! `TRUSTFOLD_SECRETS_KEY`, made by `trustfold-server new-secrets-key` — the server
//! stores them **sealed**; without one it stores them in clear, as before, and says so
//! in a warning at start.
//!
//! # The sealed form
//!
//! `tfenc1` (6 bytes, the format and its version) ‖ a 24-byte random nonce ‖ the
//! XChaCha20-Poly1305 ciphertext of the secret with its 16-byte tag. The associated data
//! is `tfenc1` and what the secret is for ([`Purpose`]): `trustfold server key`, or
//! `trustfold webhook secret` and the endpoint's id, so a sealed value copied to another
//! row or column does not open there. A sealed value is at least 46 bytes and starts
//! with `tfenc1`; the clear secrets the server makes are 32 random bytes, so the two are
//! never mistaken ([`is_sealed`]). It fits the columns as they are (`BLOB`/`bytea`; in
//! the `previous_secrets` JSON text each retired secret is base64 of its stored bytes,
//! clear or sealed).
//!
//! # At start
//!
//! In one transaction (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite, so
//! processes starting at once take turns; see [`crate::db::server_secret`]):
//!
//! - with a key, every secret stored in clear is sealed in place (a database first run
//!   without a key keeps its server key, so its published key, its participant tokens
//!   and its webhook secrets stay valid), and every sealed one must open, or the server
//!   refuses to start ([`StoreError::WrongSecretsKey`]);
//! - without a key, a sealed secret stops the start ([`StoreError::SecretsSealed`]).
//!
//! While running, a secret written with a key configured (a webhook registered, a
//! secret rotated) is sealed; one read in clear (written by a process without the key)
//! is used as it is and sealed at the next start.
//!
//! # Pitfalls
//!
//! - **Keep the key.** Lost, the sealed secrets are lost with it: the server cannot
//!   start on that database again (its signed histories stay verifiable with the
//!   published public key, but nothing new can be signed with it).
//! - **Sealing in place does not reach the past.** Backups taken before, and (until
//!   reused or vacuumed) the database's free pages and old row versions, still hold the
//!   clear values: rotate the webhook secrets after sealing if those copies matter.
//! - **One key for every process** of a database; a process started with another key
//!   refuses to start.
//!
//! # Example
//!
//! ```
//! use trustfold_server::sealed::{is_sealed, Purpose, SecretsKey};
//! use trustfold_server::StoreError;
//!
//! # fn main() -> Result<(), StoreError> {
//! let key = SecretsKey::from_hex(&"7f".repeat(32))?;
//! let secret = [42u8; 32];
//! let stored = key.seal(&Purpose::ServerKey, &secret)?;
//! assert!(stored.starts_with(b"tfenc1") && is_sealed(&stored) && !is_sealed(&secret));
//! assert_eq!(stored.len(), 6 + 24 + 32 + 16);
//! assert_eq!(key.open(&Purpose::ServerKey, &stored), Some(secret.to_vec()));
//!
//! // Sealed for another purpose, or opened with another key: it does not open.
//! let webhook = Purpose::Webhook(uuid::Uuid::from_u128(7));
//! assert_eq!(key.open(&webhook, &stored), None);
//! let other = SecretsKey::from_hex(&"80".repeat(32))?;
//! assert_eq!(other.open(&Purpose::ServerKey, &stored), None);
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use uuid::Uuid;

use crate::StoreError;

/// The first bytes of every sealed value: the format and its version.
pub const SEALED_TAG: &[u8; 6] = b"tfenc1";
/// The nonce's length (XChaCha20).
const NONCE_LEN: usize = 24;
/// The Poly1305 tag's length.
const TAG_LEN: usize = 16;
/// The shortest sealed value (an empty secret).
const MIN_SEALED: usize = SEALED_TAG.len() + NONCE_LEN + TAG_LEN;

/// Whether a stored secret is sealed (else it is the secret in clear).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.len() >= MIN_SEALED && stored.starts_with(SEALED_TAG)
}

/// What a secret is for; bound to its sealed form as associated data, so that a sealed
/// value opens only where it was sealed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The server's Ed25519 secret (`server_keys.secret`).
    ServerKey,
    /// A webhook endpoint's signing secret, current or retired.
    Webhook(Uuid),
}

impl Purpose {
    /// The associated data: [`SEALED_TAG`], then the purpose.
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = SEALED_TAG.to_vec();
        match self {
            Purpose::ServerKey => aad.extend_from_slice(b"trustfold server key"),
            Purpose::Webhook(id) => {
                aad.extend_from_slice(b"trustfold webhook secret");
                aad.extend_from_slice(id.as_bytes());
            }
        }
        aad
    }

    /// The secret in words, for errors.
    fn describe(&self) -> String {
        match self {
            Purpose::ServerKey => "the server key".into(),
            Purpose::Webhook(id) => format!("webhook {id}'s signing secret"),
        }
    }
}

/// The secrets key (key-encryption key): 32 bytes that seal the secrets stored in the
/// database. Never printed (its `Debug` shows nothing of it).
#[derive(Clone)]
pub struct SecretsKey(Arc<[u8; 32]>);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretsKey(Arc::new(bytes))
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| StoreError::SecretsKey(format!("no randomness for a new key: {e}")))?;
        Ok(SecretsKey::from_bytes(bytes))
    }

    /// A key from its 64 hex digits (whitespace around them is ignored). The error
    /// never repeats the text, which may be most of a key.
    pub fn from_hex(text: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        let how = "make one with `trustfold-server new-secrets-key`";
        if text.len() != 64 {
            return Err(StoreError::SecretsKey(format!(
                "it must be 64 hex digits (32 bytes), not {} characters; {how}",
                text.chars().count()
            )));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| {
            StoreError::SecretsKey(format!(
                "it must be 64 hex digits (0-9, a-f), and has other characters; {how}"
            ))
        })?;
        if bytes == [0; 32] {
            return Err(StoreError::SecretsKey(format!(
                "it is all zeros, which is no secret; {how}"
            )));
        }
        Ok(SecretsKey::from_bytes(bytes))
    }

    /// A key from a file holding its 64 hex digits (whitespace around them is
    /// ignored). A file that others than its owner may read is used, with a warning.
    pub fn from_file(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            StoreError::SecretsKey(format!("cannot read the secrets key file {shown}: {e}"))
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        file = %shown,
                        "the secrets key file may be read by other users; make it readable \
                         by the server's user only (chmod 600)"
                    );
                }
            }
        }
        SecretsKey::from_hex(&text).map_err(|e| match e {
            StoreError::SecretsKey(m) => StoreError::SecretsKey(format!("{shown}: {m}")),
            other => other,
        })
    }

    /// The key as 64 hex digits (what [`SecretsKey::from_hex`] reads).
    pub fn to_hex(&self) -> String {
        hex::encode(*self.0)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.0).into())
    }

    /// `secret` sealed for `purpose` under a fresh random nonce (see the [module
    /// docs](self) for the format).
    pub fn seal(&self, purpose: &Purpose, secret: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| StoreError::SecretsKey(format!("no randomness to seal a secret: {e}")))?;
        let aad = purpose.associated_data();
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::SecretsKey("a secret could not be sealed".into()))?;
        let mut out = Vec::with_capacity(SEALED_TAG.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(SEALED_TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The secret sealed in `stored` for `purpose`; `None` when it does not open: not
    /// sealed, sealed under another key or for another purpose, or altered.
    pub fn open(&self, purpose: &Purpose, stored: &[u8]) -> Option<Vec<u8>> {
        if !is_sealed(stored) {
            return None;
        }
        let rest = &stored[SEALED_TAG.len()..];
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let aad = purpose.associated_data();
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()
    }
}

/// How this process keeps secrets in the database: sealed under its secrets key, or,
/// without one, in clear.
#[derive(Debug, Clone, Default)]
pub struct AtRest(Option<SecretsKey>);

impl AtRest {
    /// Sealed under `key`, or in clear without one.
    pub fn new(key: Option<SecretsKey>) -> Self {
        AtRest(key)
    }

    /// The secrets key, if this process has one.
    pub fn key(&self) -> Option<&SecretsKey> {
        self.0.as_ref()
    }

    /// A secret as it is to be stored: sealed with a key, else as it is.
    pub fn store(&self, purpose: &Purpose, secret: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.0 {
            Some(key) => key.seal(purpose, secret),
            None => Ok(secret.to_vec()),
        }
    }

    /// The secret in a stored value: opened if sealed (with this process's key: without
    /// one, [`StoreError::SecretsSealed`]; with a key that does not open it,
    /// [`StoreError::WrongSecretsKey`]), else the value as it is.
    pub fn load(&self, purpose: &Purpose, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        if !is_sealed(stored) {
            return Ok(stored.to_vec());
        }
        let key = self.0.as_ref().ok_or(StoreError::SecretsSealed)?;
        key.open(purpose, stored)
            .ok_or_else(|| StoreError::WrongSecretsKey {
                what: purpose.describe(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::from_bytes([byte; 32])
    }

    #[test]
    fn seals_and_opens_only_with_its_key_and_purpose() {
        let (k, secret) = (key(1), [9u8; 32]);
        let hook = Purpose::Webhook(Uuid::from_u128(5));
        let a = k.seal(&hook, &secret).expect("seal");
        let b = k.seal(&hook, &secret).expect("seal");
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(!a.windows(secret.len()).any(|w| w == secret));
        assert_eq!(k.open(&hook, &a), Some(secret.to_vec()));
        assert_eq!(k.open(&hook, &b), Some(secret.to_vec()));
        assert_eq!(key(2).open(&hook, &a), None, "another key");
        assert_eq!(k.open(&Purpose::ServerKey, &a), None, "another purpose");
        let other_hook = Purpose::Webhook(Uuid::from_u128(6));
        assert_eq!(k.open(&other_hook, &a), None, "another webhook");
        // Any byte altered: it does not open.
        for i in 0..a.len() {
            let mut altered = a.clone();
            altered[i] ^= 1;
            assert_eq!(k.open(&hook, &altered), None, "byte {i} altered");
        }
        // Clear values are not sealed, and do not open.
        assert!(!is_sealed(&secret));
        assert!(!is_sealed(b"tfenc1 but far too short"));
        assert_eq!(k.open(&hook, &secret), None);
    }

    #[test]
    fn at_rest_stores_and_loads() {
        let hook = Purpose::Webhook(Uuid::from_u128(5));
        let clear = AtRest::default();
        let sealed = AtRest::new(Some(key(1)));
        assert_eq!(clear.store(&hook, b"s").expect("store"), b"s");
        let stored = sealed.store(&hook, b"s").expect("store");
        assert!(is_sealed(&stored));
        assert_eq!(sealed.load(&hook, &stored).expect("load"), b"s");
        // A clear value is used as it is, with a key or without.
        assert_eq!(sealed.load(&hook, b"s").expect("load"), b"s");
        assert_eq!(clear.load(&hook, b"s").expect("load"), b"s");
        assert!(matches!(
            clear.load(&hook, &stored),
            Err(StoreError::SecretsSealed)
        ));
        let wrong = AtRest::new(Some(key(2))).load(&hook, &stored);
        assert!(
            matches!(&wrong, Err(StoreError::WrongSecretsKey { what }) if what.contains("webhook")),
            "{wrong:?}"
        );
    }

    #[test]
    fn keys_are_64_hex_digits() {
        let k = SecretsKey::from_hex(&format!("  {}\n", "aB".repeat(32))).expect("key");
        assert_eq!(k.to_hex(), "ab".repeat(32));
        assert_eq!(format!("{k:?}"), "SecretsKey(..)");
        for bad in [
            "",
            "ab",
            &"ab".repeat(33),
            &"zz".repeat(32),
            &"00".repeat(32),
        ] {
            let e = SecretsKey::from_hex(bad).expect_err(bad).to_string();
            assert!(e.contains("new-secrets-key"), "{e}");
        }
        // The error does not repeat the text.
        let e = SecretsKey::from_hex(&format!("{}q", "c".repeat(63)))
            .expect_err("q")
            .to_string();
        assert!(!e.contains("ccc"), "{e}");
        let generated = SecretsKey::generate().expect("key");
        assert_ne!(
            generated.to_hex(),
            SecretsKey::generate().expect("key").to_hex()
        );
        let again = SecretsKey::from_hex(&generated.to_hex()).expect("key");
        let sealed = generated.seal(&Purpose::ServerKey, b"x").expect("seal");
        assert_eq!(
            again.open(&Purpose::ServerKey, &sealed),
            Some(b"x".to_vec())
        );
    }

    #[test]
    fn key_files_are_read_trimmed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", "5e".repeat(32))).expect("write");
        assert_eq!(
            SecretsKey::from_file(&path).expect("key").to_hex(),
            "5e".repeat(32)
        );
        let missing = SecretsKey::from_file(&dir.path().join("nope"))
            .expect_err("missing")
            .to_string();
        assert!(
            missing.contains("cannot read the secrets key file"),
            "{missing}"
        );
    }
}
