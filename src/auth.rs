//! Token verification and minting: HS256 pinned, `exp`, `iss`, `aud`
//! required; a verified token becomes a [`Principal`]. Role checks live here
//! too so HTTP and WebSocket refuse the same things the same way.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthSettings, Secret};
use crate::domain::{Principal, Role, Unit, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid duration '{0}' (use e.g. 90s, 30m, 12h, 7d)")]
    BadDuration(String),
    #[error("signing key unusable: {0}")]
    Key(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
}

/// Verifies and mints tokens with the configured key.
#[derive(Clone)]
pub struct Authority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl Authority {
    pub fn new(settings: &AuthSettings, secret: &Secret) -> Result<Self, AuthError> {
        let encoding = EncodingKey::from_secret(secret.expose().as_bytes())
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let decoding = DecodingKey::from_secret(secret.expose().as_bytes())
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_audience(&[settings.audience.as_str()]);
        validation.leeway = settings.leeway_s;
        validation.validate_exp = true;
        Ok(Self {
            encoding,
            decoding,
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > 8192 {
            return Err(AuthError::Invalid("token too long".into()));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    AuthError::Invalid("bad signature".into())
                }
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    AuthError::Invalid("wrong audience".into())
                }
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                    AuthError::Invalid("wrong issuer".into())
                }
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    AuthError::Invalid("algorithm not accepted".into())
                }
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim '{c}'"))
                }
                _ => AuthError::Invalid("malformed token".into()),
            })?;
        principal_from(data.claims)
    }

    /// Signs a token for `sub` valid for `ttl`.
    pub fn mint(
        &self,
        sub: &str,
        role: Role,
        unit: Option<Unit>,
        name: &str,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: sub.to_string(),
            role,
            unit,
            name: name.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + ttl.as_secs().max(1),
        };
        principal_from(claims.clone())?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Key(e.to_string()))
    }
}

fn principal_from(claims: Claims) -> Result<Principal, AuthError> {
    if claims.sub.is_empty() || claims.sub.len() > 128 {
        return Err(AuthError::Invalid("sub must be 1..=128 characters".into()));
    }
    let unit = match (claims.role, claims.unit) {
        (Role::Responder, None) => {
            return Err(AuthError::Invalid("a responder token needs a unit".into()));
        }
        (Role::Responder, Some(u)) => Some(u),
        (_, _) => None,
    };
    Ok(Principal {
        sub: claims.sub.into(),
        role: claims.role,
        unit,
        name: claims.name.chars().take(80).collect(),
    })
}

/// Refuses a principal whose role is not among `allowed`.
pub fn require(
    principal: &Principal,
    allowed: &[Role],
    what: &str,
) -> Result<(), crate::protocol::ApiError> {
    if allowed.contains(&principal.role) {
        Ok(())
    } else {
        Err(crate::protocol::ApiError::forbidden(format!(
            "role '{}' may not {what}",
            role_name(principal.role)
        )))
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Police => "police",
        Role::Coordinator => "coordinator",
        Role::Responder => "responder",
    }
}

/// `90s`, `30m`, `12h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, AuthError> {
    let s = s.trim();
    let bad = || AuthError::BadDuration(s.to_string());
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        Some(_) => (s, 1),
        None => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(secret: &str) -> Authority {
        Authority::new(&AuthSettings::default(), &Secret::new(secret)).expect("authority")
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_forgery() {
        let a = authority(KEY);
        let t = a
            .mint(
                "v-1",
                Role::Responder,
                Some(Unit::Volunteer),
                "Li",
                Duration::from_secs(60),
            )
            .expect("mint");
        let p = a.verify(&t).expect("verify");
        assert_eq!(&*p.sub, "v-1");
        assert_eq!(p.unit, Some(Unit::Volunteer));
        let other = authority("ffffffffffffffffffffffffffffffff");
        assert!(matches!(other.verify(&t), Err(AuthError::Invalid(_))));
        assert!(a.verify("abc.def.ghi").is_err());
    }

    #[test]
    fn responder_without_unit_is_refused() {
        let a = authority(KEY);
        assert!(
            a.mint("v", Role::Responder, None, "", Duration::from_secs(5))
                .is_err()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("12h").expect("d").as_secs(), 43_200);
        assert_eq!(parse_duration("90").expect("d").as_secs(), 90);
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
