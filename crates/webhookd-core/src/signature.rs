//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, with `whsec_` secrets.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Bytes in a freshly generated secret (Standard Webhooks allows 24 to 64).
const SECRET_BYTES: usize = 24;

/// A webhook signing secret, written `whsec_<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Box<[u8]>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// Why a secret string is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_` or its rest is not base64.
    #[error("a signing secret must be \"whsec_\" followed by base64")]
    Malformed,
    /// It decodes to too few or too many bytes.
    #[error("a signing secret must decode to 24-64 bytes, got {0}")]
    Length(usize),
}

impl SigningSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(bytes.into())
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let b64 = s.strip_prefix(PREFIX).ok_or(SecretError::Malformed)?;
        let bytes = STANDARD.decode(b64).map_err(|_| SecretError::Malformed)?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(SecretError::Length(bytes.len()));
        }
        Ok(Self(bytes.into()))
    }

    /// The `whsec_` form, for storage and for showing to the webhook's owner.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any size"),
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header value: one `v1,<sig>` entry per secret, space-separated.
pub fn sign(secrets: &[SigningSecret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::with_capacity(secrets.len() * 48);
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            header.push(' ');
        }
        header.push_str("v1,");
        STANDARD.encode_string(
            secret.mac(msg_id, timestamp, body).finalize().into_bytes(),
            &mut header,
        );
    }
    header
}

/// Whether any `v1` entry of `header` is a valid signature of the message by `secret` (constant-time).
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    header.split(' ').any(|entry| {
        let Some(sig) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = STANDARD.decode(sig) else {
            return false;
        };
        secret
            .mac(msg_id, timestamp, body)
            .verify_slice(&sig)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The test vector of the Standard Webhooks reference libraries.
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(
            std::slice::from_ref(&secret),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &sig
        ));
        assert!(!verify(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b"{}",
            &sig
        ));
    }

    #[test]
    fn every_secret_signs_during_rotation() {
        let (old, new) = (SigningSecret::generate(), SigningSecret::generate());
        let header = sign(&[new.clone(), old.clone()], "id", 1, b"body");
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(&old, "id", 1, b"body", &header));
        assert!(verify(&new, "id", 1, b"body", &header));
        assert!(!verify(
            &SigningSecret::generate(),
            "id",
            1,
            b"body",
            &header
        ));
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let s = SigningSecret::generate();
        assert_eq!(SigningSecret::parse(&s.expose()).unwrap(), s);
        assert_eq!(SigningSecret::parse("abc"), Err(SecretError::Malformed));
        assert_eq!(
            SigningSecret::parse("whsec_AAAA"),
            Err(SecretError::Length(3))
        );
        assert_eq!(format!("{s:?}"), "SigningSecret(<redacted>)");
    }
}
