//! TLS and AUTH for every NSQ connection of a service: one flattened group of settings,
//! [`NsqSecurityArgs`], resolved once at start into [`NsqSecurity`], which every
//! `nsq::ConnectionConfig` of the service (consumers, producers, the replay side) is built
//! with.
//!
//! Without TLS, anyone on the network path reads and alters every message; without AUTH,
//! anyone who reaches nsqd publishes to any topic and consumes any channel. nsqd enforces
//! both: `--tls-required` with `--tls-client-auth-policy=require-verify`, and
//! `--auth-http-address` pointing at the operator's auth service, which grants each secret its
//! topics and channels.
//!
//! The secret comes from `--auth-secret` (flag, `<PREFIX>_AUTH_SECRET`, or the config file)
//! or, the usual way with Docker secrets, from a file (`--auth-secret-file`). It is never
//! printed: `--print-config` and the start-up log line show `<redacted>`.

use std::path::PathBuf;

use clap::{builder::BoolishValueParser, ArgAction};
use serde::Serialize;

use crate::config::ConfigError;

/// The TLS and AUTH settings of a service's NSQ connections; flatten into its settings with
/// `#[command(flatten)]` and `#[serde(flatten)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize)]
pub struct NsqSecurityArgs {
    /// Connect to nsqd over TLS (nsqd's --tls-cert/--tls-key; required by nsqd's
    /// --tls-required), verifying nsqd's certificate against --tls-root-ca-file
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = false,
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub tls: bool,

    /// PEM file of the CA(s) that signed nsqd's certificate (needed with --tls)
    #[arg(long, value_name = "PATH")]
    pub tls_root_ca_file: Option<PathBuf>,

    /// PEM client certificate presented to nsqd (with --tls-key; for nsqd's
    /// --tls-client-auth-policy)
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// Name nsqd's certificate must be valid for (unset: the host of the address)
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Secret sent with AUTH when nsqd asks for it (nsqd's --auth-http-address); prefer
    /// --auth-secret-file
    #[arg(long, value_name = "SECRET")]
    pub auth_secret: Option<Secret>,

    /// File holding the AUTH secret (e.g. a Docker secret, /run/secrets/...); surrounding
    /// white space is ignored
    #[arg(long, value_name = "PATH")]
    pub auth_secret_file: Option<PathBuf>,
}

/// A secret setting: serialized as itself (for the redacting `--print-config`), never shown
/// by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// TLS and AUTH, resolved: certificates read and checked, the secret read.
#[derive(Clone, Default)]
pub struct NsqSecurity {
    /// The TLS client configuration, when `--tls`.
    pub tls: Option<nsq::TlsSettings>,
    /// The AUTH secret, when given.
    pub auth_secret: Option<String>,
}

impl std::fmt::Debug for NsqSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsqSecurity")
            .field("tls", &self.tls)
            .field(
                "auth_secret",
                &self.auth_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl NsqSecurityArgs {
    /// Checks the combination of settings and reads the files they name; an error names the
    /// flag and says what to do.
    pub fn resolve(&self) -> Result<NsqSecurity, ConfigError> {
        let tls = if self.tls {
            let ca = self.tls_root_ca_file.as_ref().ok_or_else(|| {
                ConfigError::value(
                    "--tls-root-ca-file",
                    "is needed with --tls: the PEM file of the CA that signed nsqd's certificate",
                )
            })?;
            let client = match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(ConfigError::value(
                        "--tls-key",
                        "is needed with --tls-cert (the client certificate's private key)",
                    ))
                }
                (None, Some(_)) => {
                    return Err(ConfigError::value(
                        "--tls-cert",
                        "is needed with --tls-key (the client certificate)",
                    ))
                }
            };
            let settings = nsq::TlsSettings::new(ca, client, self.tls_server_name.clone())
                .map_err(|e| {
                    ConfigError::value("--tls-root-ca-file / --tls-cert", e.to_string())
                })?;
            Some(settings)
        } else {
            let given = [
                ("--tls-root-ca-file", self.tls_root_ca_file.is_some()),
                ("--tls-cert", self.tls_cert.is_some()),
                ("--tls-key", self.tls_key.is_some()),
                ("--tls-server-name", self.tls_server_name.is_some()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                return Err(ConfigError::value(
                    *flag,
                    "is set but TLS is off: add --tls (or drop this setting)",
                ));
            }
            None
        };
        let auth_secret = match (&self.auth_secret, &self.auth_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::value(
                    "--auth-secret / --auth-secret-file",
                    "give one of the two, not both",
                ))
            }
            (Some(secret), None) => Some(non_empty_secret("--auth-secret", &secret.0)?),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::value(
                        "--auth-secret-file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(non_empty_secret("--auth-secret-file", &text)?)
            }
            (None, None) => None,
        };
        Ok(NsqSecurity { tls, auth_secret })
    }
}

/// The secret without surrounding white space; an empty one is an error.
fn non_empty_secret(flag: &str, text: &str) -> Result<String, ConfigError> {
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ConfigError::value(flag, "the AUTH secret is empty"));
    }
    Ok(secret.to_owned())
}

impl NsqSecurity {
    /// `connection` with TLS and AUTH set.
    pub fn apply(&self, connection: nsq::ConnectionConfig) -> nsq::ConnectionConfig {
        nsq::ConnectionConfig {
            tls: self.tls.clone(),
            auth_secret: self.auth_secret.clone(),
            ..connection
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: ConfigError) -> String {
        e.to_string()
    }

    #[test]
    fn off_by_default_and_tls_files_need_tls() {
        let none = NsqSecurityArgs::default().resolve().unwrap();
        assert!(none.tls.is_none() && none.auth_secret.is_none());
        let e = NsqSecurityArgs {
            tls_root_ca_file: Some("ca.pem".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(message(e).contains("add --tls"));
    }

    #[test]
    fn tls_needs_a_readable_ca_and_both_halves_of_a_client_certificate() {
        let e = NsqSecurityArgs {
            tls: true,
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(message(e).contains("--tls-root-ca-file"));
        let e = NsqSecurityArgs {
            tls: true,
            tls_root_ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(message(e).contains("cannot read CA file /nonexistent/ca.pem"));
        let e = NsqSecurityArgs {
            tls: true,
            tls_root_ca_file: Some("ca.pem".into()),
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(message(e).contains("--tls-key"));
    }

    #[test]
    fn the_secret_comes_from_a_file_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "hunter2\n").unwrap();
        let s = NsqSecurityArgs {
            auth_secret_file: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.auth_secret.as_deref(), Some("hunter2"));
        let conn = s.apply(nsq::ConnectionConfig::default());
        assert_eq!(conn.auth_secret.as_deref(), Some("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
        let args = NsqSecurityArgs {
            auth_secret: Some(Secret("hunter2".into())),
            ..Default::default()
        };
        assert!(!format!("{args:?}").contains("hunter2"));
        std::fs::write(&path, " \n").unwrap();
        let e = NsqSecurityArgs {
            auth_secret_file: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(message(e).contains("empty"));
        let e = NsqSecurityArgs {
            auth_secret: Some(Secret("a".into())),
            auth_secret_file: Some("b".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(message(e).contains("not both"));
    }
}
