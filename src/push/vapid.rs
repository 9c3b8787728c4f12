//! VAPID (RFC 8292): the hub's P-256 key pair and the `Authorization:
//! vapid t=<JWT>, k=<public key>` header that identifies the hub to push
//! services.
//!
//! The private key comes from `push.vapid_private_key` (best set through
//! `WOODPECKER__PUSH__VAPID_PRIVATE_KEY`), else `push.vapid_private_key_file`,
//! else `<data_dir>/vapid.key`, generated with mode 0600 on first use — so
//! `serve` and `vapid-keys` with the same flags agree. A key is the
//! base64url P-256 scalar (what `web-push generate-vapid-keys` prints) or a
//! PEM file (PKCS#8 or SEC1).
//!
//! The JWT is signed here with ES256 rather than by `web-push-native`,
//! whose 0.5 signer drops a non-default port from `aud`; RFC 8292 asks for
//! the endpoint's origin, port included.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use parking_lot::Mutex;

use super::{PushError, PushSettings};

/// How long a signed JWT is valid (RFC 8292 allows at most 24 hours).
pub const JWT_LIFETIME_S: u64 = 12 * 3600;
/// A cached JWT is re-signed once less than this is left.
const JWT_REFRESH_S: u64 = 3600;
/// Distinct push-service origins whose JWT is cached.
const JWT_CACHE_MAX: usize = 256;

/// Where the private key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `push.vapid_private_key` (environment or config file).
    Setting,
    /// `push.vapid_private_key_file`.
    File(PathBuf),
    /// `<data_dir>/vapid.key`, read or generated.
    DataDir(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Setting => f.write_str("push.vapid_private_key"),
            KeySource::File(p) => write!(f, "{}", p.display()),
            KeySource::DataDir(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The hub's VAPID identity; signs and caches one JWT per push origin.
pub struct VapidKey {
    signing: SigningKey,
    public_b64: String,
    subject: String,
    cache: Mutex<HashMap<String, (String, u64)>>,
}

impl fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_b64)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// A fresh key pair as base64url strings: (private scalar, public point).
pub fn generate() -> (String, String) {
    let secret = random_secret();
    let public = public_b64(&secret);
    (URL_SAFE_NO_PAD.encode(secret.to_bytes()), public)
}

fn random_secret() -> SecretKey {
    loop {
        // A random 32-byte string is a valid scalar except with probability
        // about 2^-32; draw again in that case.
        let bytes: [u8; 32] = rand::random();
        if let Ok(secret) = SecretKey::from_slice(&bytes) {
            return secret;
        }
    }
}

fn public_b64(secret: &SecretKey) -> String {
    URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes())
}

/// Parses a private key: base64url (or base64) of the 32-byte scalar, or PEM.
pub fn parse_private_key(text: &str) -> Result<SecretKey, PushError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        use p256::pkcs8::DecodePrivateKey as _;
        return SecretKey::from_pkcs8_pem(text)
            .or_else(|_| SecretKey::from_sec1_pem(text))
            .map_err(|_| PushError::Key("is not a P-256 private key in PEM form".into()));
    }
    let bytes =
        decode_b64(text).ok_or_else(|| PushError::Key("is not base64url (or PEM)".into()))?;
    if bytes.len() != 32 {
        return Err(PushError::Key(format!(
            "must be 32 bytes (a P-256 scalar), got {}",
            bytes.len()
        )));
    }
    SecretKey::from_slice(&bytes).map_err(|_| PushError::Key("is not a valid P-256 scalar".into()))
}

/// Decodes base64url or standard base64, padded or not.
pub(crate) fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let normalized: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(normalized.as_bytes()).ok()
}

/// Loads the key exactly as `serve` does, generating `<data_dir>/vapid.key`
/// when neither setting names one.
pub fn load_or_create(
    settings: &PushSettings,
    data_dir: &Path,
) -> Result<(VapidKey, KeySource), PushError> {
    let (secret, source) = if !settings.vapid_private_key.is_empty() {
        (
            parse_private_key(settings.vapid_private_key.expose())?,
            KeySource::Setting,
        )
    } else if let Some(path) = &settings.vapid_private_key_file {
        let text = std::fs::read_to_string(path).map_err(|source| PushError::KeyFile {
            path: path.clone(),
            source,
        })?;
        (parse_private_key(&text)?, KeySource::File(path.clone()))
    } else {
        let path = data_dir.join("vapid.key");
        (read_or_generate(&path)?, KeySource::DataDir(path))
    };
    Ok((VapidKey::new(secret, settings.subject.clone()), source))
}

fn read_or_generate(path: &Path) -> Result<SecretKey, PushError> {
    let err = |source| PushError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_private_key(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let (private, _) = generate();
            match crate::config::write_private(path, &format!("{private}\n")) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "generated a VAPID key pair");
                    parse_private_key(&private)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(path).map_err(err)?;
                    parse_private_key(&text)
                }
                Err(e) => Err(err(e)),
            }
        }
        Err(e) => Err(err(e)),
    }
}

impl VapidKey {
    pub fn new(secret: SecretKey, subject: String) -> Self {
        Self {
            public_b64: public_b64(&secret),
            signing: SigningKey::from(&secret),
            subject,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The public key, base64url of the uncompressed point (65 bytes): the
    /// browser's `applicationServerKey`.
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    /// Signs an ES256 JWT `{aud, exp, sub}`.
    pub fn sign_jwt(&self, aud: &str, exp: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({"aud": aud, "exp": exp, "sub": self.subject});
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
        let input = format!("{header}.{claims}");
        let signature: Signature = self.signing.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The `Authorization` header value for a push service at `origin`
    /// (`scheme://host[:port]`), reusing a cached JWT while it has more
    /// than an hour left.
    pub fn authorization(&self, origin: &str, now_s: u64) -> String {
        let token = {
            let mut cache = self.cache.lock();
            match cache.get(origin) {
                Some((token, exp)) if *exp > now_s + JWT_REFRESH_S => token.clone(),
                _ => {
                    let exp = now_s + JWT_LIFETIME_S;
                    let token = self.sign_jwt(origin, exp);
                    if cache.len() >= JWT_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(origin.to_string(), (token.clone(), exp));
                    token
                }
            }
        };
        format!("vapid t={token}, k={}", self.public_b64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn generated_pair_round_trips() {
        let (private, public) = generate();
        let secret = parse_private_key(&private).expect("parse");
        assert_eq!(public_b64(&secret), public);
        let bytes = decode_b64(&public).expect("b64");
        assert_eq!(bytes.len(), 65);
        assert_eq!(bytes[0], 4);
        // Padded standard base64 is accepted too.
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(secret.to_bytes());
        assert!(parse_private_key(&std_b64).is_ok());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(parse_private_key("not base64 !!").is_err());
        assert!(parse_private_key(&URL_SAFE_NO_PAD.encode([1u8; 16])).is_err());
        assert!(parse_private_key(&URL_SAFE_NO_PAD.encode([0u8; 32])).is_err());
        assert!(parse_private_key("-----BEGIN EC PRIVATE KEY-----\nxx\n").is_err());
    }

    #[test]
    fn data_dir_key_is_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let settings = PushSettings::default();
        let (a, source) = load_or_create(&settings, dir.path()).expect("key");
        assert_eq!(source, KeySource::DataDir(dir.path().join("vapid.key")));
        let (b, _) = load_or_create(&settings, dir.path()).expect("key");
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("vapid.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn setting_wins_over_file_and_data_dir() {
        let dir = tempfile::tempdir().expect("tmp");
        let (private, public) = generate();
        let settings = PushSettings {
            vapid_private_key: Secret::new(private.clone()),
            vapid_private_key_file: Some(dir.path().join("missing.key")),
            ..PushSettings::default()
        };
        let (key, source) = load_or_create(&settings, dir.path()).expect("key");
        assert_eq!(key.public_key(), public);
        assert_eq!(source, KeySource::Setting);
        assert!(!dir.path().join("vapid.key").exists());

        let file = dir.path().join("given.key");
        std::fs::write(&file, format!("{private}\n")).expect("write");
        let settings = PushSettings {
            vapid_private_key_file: Some(file.clone()),
            ..PushSettings::default()
        };
        let (key, source) = load_or_create(&settings, dir.path()).expect("key");
        assert_eq!(key.public_key(), public);
        assert_eq!(source, KeySource::File(file));

        let settings = PushSettings {
            vapid_private_key_file: Some(dir.path().join("missing.key")),
            ..PushSettings::default()
        };
        assert!(matches!(
            load_or_create(&settings, dir.path()),
            Err(PushError::KeyFile { .. })
        ));
    }

    #[test]
    fn jwt_verifies_and_is_cached_per_origin() {
        use p256::ecdsa::VerifyingKey;
        use p256::ecdsa::signature::Verifier as _;
        let (private, _) = generate();
        let key = VapidKey::new(
            parse_private_key(&private).expect("key"),
            "mailto:ops@example.invalid".into(),
        );
        let a = key.authorization("https://push.example:8443", 1000);
        let b = key.authorization("https://push.example:8443", 2000);
        assert_eq!(a, b, "reused while fresh");
        let c = key.authorization("https://push.example:8443", 1000 + JWT_LIFETIME_S);
        assert_ne!(a, c, "re-signed near expiry");
        let token = a
            .strip_prefix("vapid t=")
            .and_then(|s| s.split(", k=").next())
            .expect("token");
        let (input, sig) = token.rsplit_once('.').expect("jwt");
        let claims = input.split('.').nth(1).expect("claims");
        let claims: serde_json::Value =
            serde_json::from_slice(&decode_b64(claims).expect("b64")).expect("json");
        assert_eq!(claims["aud"], "https://push.example:8443");
        assert_eq!(claims["exp"], 1000 + JWT_LIFETIME_S);
        let vk =
            VerifyingKey::from_sec1_bytes(&decode_b64(key.public_key()).expect("b64")).expect("vk");
        let sig = Signature::from_slice(&decode_b64(sig).expect("b64")).expect("sig");
        vk.verify(input.as_bytes(), &sig).expect("valid signature");
    }
}
