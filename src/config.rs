//! Typed, layered settings: built-in defaults, then the TOML file, then
//! `WOODPECKER__SECTION__KEY` environment variables, then command-line flags.
//! [`Settings::validate`] names the setting that is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: setting `{setting}` {problem}")]
    Invalid {
        setting: &'static str,
        problem: String,
    },
    #[error("configuration: cannot use key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A secret that never prints.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub geo: GeoSettings,
    pub ws: WsSettings,
    pub alerts: AlertSettings,
    pub store: StoreSettings,
    pub bus: BusSettings,
    pub push: crate::push::PushSettings,
    pub grid: crate::grid::GridSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub data_dir: PathBuf,
    pub web_dir: PathBuf,
    pub metrics_public: bool,
    pub max_body_bytes: usize,
    pub shutdown_grace_s: u64,
    /// Tasks queued on the shared runtime above which the control thread
    /// offers a fan-out itself instead of handing it to a runtime worker
    /// (see `crate::control`); 0 = never hand it over.
    pub control_busy_queue: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub jwt_secret: Secret,
    pub jwt_secret_file: Option<PathBuf>,
    pub leeway_s: u64,
    pub default_ttl: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoSettings {
    pub presence_resolution: u8,
    pub max_radius_m: f64,
    pub location_stale_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsSettings {
    pub hello_timeout_s: u64,
    pub heartbeat_s: u64,
    pub outbox_capacity: usize,
    pub max_message_bytes: usize,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub write_timeout_s: u64,
    pub rate_per_s: f64,
    pub rate_burst: f64,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    pub default_expiry_s: u64,
    pub max_expiry_s: u64,
    pub max_title_chars: usize,
    pub max_body_chars: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: String,
    pub max_batch: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    pub backend: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "data".into(),
            web_dir: "web".into(),
            metrics_public: true,
            max_body_bytes: 64 * 1024,
            shutdown_grace_s: 5,
            control_busy_queue: 1024,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "woodpecker".into(),
            audience: "woodpecker".into(),
            jwt_secret: Secret::default(),
            jwt_secret_file: None,
            leeway_s: 30,
            default_ttl: "12h".into(),
        }
    }
}

impl Default for GeoSettings {
    fn default() -> Self {
        Self {
            presence_resolution: 9,
            max_radius_m: 20_000.0,
            location_stale_s: 900,
        }
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            hello_timeout_s: 10,
            heartbeat_s: 25,
            outbox_capacity: 256,
            max_message_bytes: 64 * 1024,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 4096,
            write_timeout_s: 10,
            rate_per_s: 20.0,
            rate_burst: 60.0,
            max_connections: 50_000,
        }
    }
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            default_expiry_s: 24 * 3600,
            max_expiry_s: 7 * 24 * 3600,
            max_title_chars: 200,
            max_body_chars: 2000,
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: "sqlite".into(),
            max_batch: 4096,
        }
    }
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            backend: "local".into(),
        }
    }
}

/// Command-line overrides; they win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// The file read when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "config/woodpecker.toml";

impl Settings {
    /// Loads defaults → file → environment → flags, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Load(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file(path));
            }
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).exists() {
                    figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE));
                }
            }
        }
        figment = figment.merge(Env::prefixed("WOODPECKER__").split("__"));
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        if let Some(listen) = &overrides.listen {
            settings.server.listen = listen.clone();
        }
        if let Some(dir) = &overrides.data_dir {
            settings.server.data_dir = dir.clone();
        }
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                setting,
                problem: problem.into(),
            }
        }
        self.listen_addr()?;
        if self.geo.presence_resolution > 15 {
            return Err(bad("geo.presence_resolution", "must be 0..=15"));
        }
        if !(self.geo.max_radius_m.is_finite()
            && self.geo.max_radius_m >= 1.0
            && self.geo.max_radius_m <= 200_000.0)
        {
            return Err(bad("geo.max_radius_m", "must be between 1 and 200000"));
        }
        if self.geo.location_stale_s == 0 {
            return Err(bad("geo.location_stale_s", "must be at least 1"));
        }
        if self.ws.hello_timeout_s == 0 || self.ws.heartbeat_s == 0 {
            return Err(bad(
                "ws.hello_timeout_s / ws.heartbeat_s",
                "must be at least 1",
            ));
        }
        if self.ws.outbox_capacity == 0 {
            return Err(bad("ws.outbox_capacity", "must be at least 1"));
        }
        if !(256..=16 * 1024 * 1024).contains(&self.ws.max_message_bytes) {
            return Err(bad(
                "ws.max_message_bytes",
                "must be between 256 and 16777216",
            ));
        }
        if self.ws.read_buffer_bytes < 256 || self.ws.write_buffer_bytes == 0 {
            return Err(bad(
                "ws.read_buffer_bytes / ws.write_buffer_bytes",
                "too small",
            ));
        }
        if !(self.ws.rate_per_s > 0.0 && self.ws.rate_burst >= 1.0) {
            return Err(bad("ws.rate_per_s / ws.rate_burst", "must be positive"));
        }
        if self.alerts.default_expiry_s == 0
            || self.alerts.default_expiry_s > self.alerts.max_expiry_s
        {
            return Err(bad(
                "alerts.default_expiry_s",
                "must be between 1 and alerts.max_expiry_s",
            ));
        }
        if self.store.backend != "sqlite" {
            return Err(bad(
                "store.backend",
                format!("'{}' is not available (sqlite)", self.store.backend),
            ));
        }
        if self.store.max_batch == 0 {
            return Err(bad("store.max_batch", "must be at least 1"));
        }
        if self.bus.backend != "local" {
            return Err(bad(
                "bus.backend",
                format!("'{}' is not available (local)", self.bus.backend),
            ));
        }
        self.push.validate()?;
        self.grid
            .validate()
            .map_err(|p| bad(p.setting, p.problem))?;
        crate::auth::parse_duration(&self.auth.default_ttl)
            .map_err(|e| bad("auth.default_ttl", e.to_string()))?;
        if self.auth.issuer.is_empty() || self.auth.audience.is_empty() {
            return Err(bad("auth.issuer / auth.audience", "must not be empty"));
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.expose().len() < 32 {
            return Err(bad("auth.jwt_secret", "must be at least 32 bytes"));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|_| ConfigError::Invalid {
                setting: "server.listen",
                problem: format!("'{}' is not an ADDR:PORT", self.server.listen),
            })
    }

    /// The JWT signing key: `auth.jwt_secret` (best from the environment),
    /// else `auth.jwt_secret_file`, else `<data_dir>/jwt.key`, generated with
    /// mode 0600 on first use — so `serve` and `token` with the same flags
    /// agree, and no secret ever sits in the repository.
    pub fn jwt_secret(&self) -> Result<Secret, ConfigError> {
        if !self.auth.jwt_secret.is_empty() {
            return Ok(self.auth.jwt_secret.clone());
        }
        let (path, generate) = match &self.auth.jwt_secret_file {
            Some(p) => (p.clone(), false),
            None => (self.server.data_dir.join("jwt.key"), true),
        };
        read_or_create_key(&path, generate)
    }
}

fn read_or_create_key(path: &Path, generate: bool) -> Result<Secret, ConfigError> {
    let err = |source| ConfigError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let key = s.trim().to_string();
            if key.len() < 32 {
                return Err(ConfigError::Invalid {
                    setting: "auth.jwt_secret_file",
                    problem: format!("{} holds fewer than 32 bytes", path.display()),
                });
            }
            Ok(Secret::new(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let key: String = (0..48)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            write_private(path, &key).map_err(err)?;
            Ok(Secret::new(key))
        }
        Err(e) => Err(err(e)),
    }
}

/// Creates `path` (it must not exist) readable by its owner only, writes
/// `contents` and syncs it: for generated keys.
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().expect("defaults valid");
    }

    #[test]
    fn invalid_setting_is_named() {
        let mut s = Settings::default();
        s.geo.presence_resolution = 16;
        let msg = s.validate().expect_err("invalid").to_string();
        assert!(msg.contains("geo.presence_resolution"), "{msg}");
        let mut s = Settings::default();
        s.server.listen = "nowhere".into();
        assert!(
            s.validate()
                .expect_err("invalid")
                .to_string()
                .contains("server.listen")
        );
    }

    #[test]
    fn key_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Settings::default();
        s.server.data_dir = dir.path().to_path_buf();
        let a = s.jwt_secret().expect("key");
        let b = s.jwt_secret().expect("key");
        assert_eq!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "Secret(***)");
    }
}
