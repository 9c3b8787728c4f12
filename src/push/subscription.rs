//! Browser push subscriptions: the `PushSubscription.toJSON()` body a
//! responder posts, its validation, the stored row and the parsed form a
//! worker sends to.
//!
//! An endpoint must be `https`; plain `http` is accepted only for a
//! loopback host and only when `push.allow_http_loopback` is set (tests).
//! With that off, endpoints naming loopback, private or link-local IP
//! literals are refused too, so a subscription cannot point the hub's
//! sender at its own network.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::vapid::decode_b64;

/// The longest endpoint accepted (real ones are a few hundred bytes).
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// `PushSubscription.toJSON()`: `{endpoint, expirationTime, keys:{p256dh, auth}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionJson {
    pub endpoint: String,
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<serde_json::Value>,
    pub keys: KeysJson,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KeysJson {
    pub p256dh: String,
    pub auth: String,
}

/// A subscription that passed validation, keys normalized to base64url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

/// One stored row of `push_subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredSubscription {
    pub id: String,
    /// The responder (token `sub`) who owns it.
    pub sub: String,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds of the last time the browser posted it.
    pub updated_at: u64,
}

/// What a worker needs to send to one device, parsed once.
#[derive(Debug)]
pub struct Target {
    pub id: Arc<str>,
    pub sub: Arc<str>,
    pub endpoint: Url,
    /// `scheme://host[:port]`: the VAPID `aud`.
    pub origin: String,
    pub ua_public: p256::PublicKey,
    pub auth: web_push_native::Auth,
}

impl Target {
    /// Parses a stored row; `None` (logged) if it no longer parses.
    pub fn from_stored(row: &StoredSubscription) -> Option<Self> {
        let parsed = (|| {
            let endpoint = Url::parse(&row.endpoint).ok()?;
            let origin = endpoint.origin().ascii_serialization();
            let ua_public = p256::PublicKey::from_sec1_bytes(&decode_b64(&row.p256dh)?).ok()?;
            let auth = decode_b64(&row.auth)?;
            if auth.len() != 16 {
                return None;
            }
            Some(Target {
                id: row.id.as_str().into(),
                sub: row.sub.as_str().into(),
                endpoint,
                origin,
                ua_public,
                auth: web_push_native::Auth::clone_from_slice(&auth),
            })
        })();
        if parsed.is_none() {
            tracing::warn!(subscription = %row.id, "stored push subscription does not parse; skipped");
        }
        parsed
    }
}

/// Validates a posted subscription. The error text is safe for the client.
pub fn validate(
    json: &SubscriptionJson,
    allow_http_loopback: bool,
) -> Result<ValidSubscription, String> {
    let endpoint = json.endpoint.trim();
    if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(format!(
            "'endpoint' must be 1-{MAX_ENDPOINT_LEN} characters"
        ));
    }
    let url = Url::parse(endpoint).map_err(|_| "'endpoint' is not a URL".to_string())?;
    check_endpoint(&url, allow_http_loopback)?;

    let p256dh = decode_b64(&json.keys.p256dh)
        .ok_or_else(|| "'keys.p256dh' is not base64url".to_string())?;
    if p256dh.len() != 65 || p256dh[0] != 4 {
        return Err("'keys.p256dh' must be an uncompressed P-256 point (65 bytes)".into());
    }
    if p256::PublicKey::from_sec1_bytes(&p256dh).is_err() {
        return Err("'keys.p256dh' is not a point on P-256".into());
    }
    let auth =
        decode_b64(&json.keys.auth).ok_or_else(|| "'keys.auth' is not base64url".to_string())?;
    if auth.len() != 16 {
        return Err("'keys.auth' must be 16 bytes".into());
    }
    Ok(ValidSubscription {
        endpoint: url.to_string(),
        p256dh: URL_SAFE_NO_PAD.encode(&p256dh),
        auth: URL_SAFE_NO_PAD.encode(&auth),
    })
}

fn check_endpoint(url: &Url, allow_http_loopback: bool) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("'endpoint' must not carry credentials".into());
    }
    if url.fragment().is_some() {
        return Err("'endpoint' must not have a fragment".into());
    }
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err("'endpoint' has no host".into());
    }
    let loopback = is_loopback(url);
    match url.scheme() {
        "https" => {}
        "http" if allow_http_loopback && loopback => {}
        "http" if allow_http_loopback => {
            return Err("'endpoint' must be https (http only for a loopback host)".into());
        }
        _ => return Err("'endpoint' must be an https URL".into()),
    }
    if !allow_http_loopback && (loopback || is_internal_ip(url)) {
        return Err("'endpoint' must be a public push service".into());
    }
    Ok(())
}

fn ip_of(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn is_loopback(url: &Url) -> bool {
    match ip_of(url) {
        Some(ip) => ip.is_loopback(),
        None => url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case("localhost")),
    }
}

fn is_internal_ip(url: &Url) -> bool {
    match ip_of(url) {
        Some(IpAddr::V4(ip)) => {
            ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64
        }
        Some(IpAddr::V6(ip)) => {
            let seg = ip.segments()[0];
            ip.is_unspecified()
                || ip.is_multicast()
                || (seg & 0xfe00) == 0xfc00
                || (seg & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;

    fn keys() -> KeysJson {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).expect("key");
        KeysJson {
            p256dh: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
            auth: URL_SAFE_NO_PAD.encode([9u8; 16]),
        }
    }

    fn sub(endpoint: &str) -> SubscriptionJson {
        SubscriptionJson {
            endpoint: endpoint.into(),
            expiration_time: None,
            keys: keys(),
        }
    }

    #[test]
    fn https_endpoints_are_accepted() {
        let v =
            validate(&sub("https://fcm.googleapis.com/fcm/send/abc:def"), false).expect("valid");
        assert_eq!(v.endpoint, "https://fcm.googleapis.com/fcm/send/abc:def");
        assert!(
            validate(
                &sub("https://updates.push.services.mozilla.com/wpush/v2/x"),
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn http_only_for_loopback_when_allowed() {
        assert!(validate(&sub("http://127.0.0.1:9999/push/1"), true).is_ok());
        assert!(validate(&sub("http://[::1]:9999/push/1"), true).is_ok());
        assert!(validate(&sub("http://localhost:9999/push/1"), true).is_ok());
        assert!(validate(&sub("http://127.0.0.1:9999/push/1"), false).is_err());
        assert!(validate(&sub("http://push.example/1"), true).is_err());
        assert!(validate(&sub("http://push.example/1"), false).is_err());
        assert!(validate(&sub("ftp://push.example/1"), true).is_err());
    }

    #[test]
    fn internal_targets_are_refused() {
        for e in [
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://10.1.2.3/x",
            "https://192.168.1.1/x",
            "https://169.254.169.254/latest",
            "https://[fd00::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://user:pw@push.example/x",
            "https://push.example/x#frag",
            "not a url",
        ] {
            assert!(validate(&sub(e), false).is_err(), "{e}");
        }
    }

    #[test]
    fn keys_are_checked() {
        let mut s = sub("https://push.example/x");
        s.keys.auth = URL_SAFE_NO_PAD.encode([1u8; 15]);
        assert!(
            validate(&s, false)
                .expect_err("invalid")
                .contains("keys.auth")
        );
        let mut s = sub("https://push.example/x");
        s.keys.p256dh = URL_SAFE_NO_PAD.encode([4u8; 65]);
        assert!(
            validate(&s, false)
                .expect_err("invalid")
                .contains("keys.p256dh")
        );
        let mut s = sub("https://push.example/x");
        s.keys.p256dh = "%%%".into();
        assert!(validate(&s, false).is_err());
        // Padded standard base64 is normalized.
        let mut s = sub("https://push.example/x");
        s.keys.auth = base64::engine::general_purpose::STANDARD.encode([0xfbu8; 16]);
        let v = validate(&s, false).expect("valid");
        assert_eq!(v.auth, URL_SAFE_NO_PAD.encode([0xfbu8; 16]));
    }

    #[test]
    fn stored_rows_parse_to_targets() {
        let v = validate(&sub("http://127.0.0.1:8443/push/a"), true).expect("valid");
        let row = StoredSubscription {
            id: "ps_1".into(),
            sub: "v-1".into(),
            endpoint: v.endpoint,
            p256dh: v.p256dh,
            auth: v.auth,
            created_at: 1,
            updated_at: 1,
        };
        let t = Target::from_stored(&row).expect("target");
        assert_eq!(t.origin, "http://127.0.0.1:8443");
        let mut bad = row;
        bad.auth = "AA".into();
        assert!(Target::from_stored(&bad).is_none());
    }
}
