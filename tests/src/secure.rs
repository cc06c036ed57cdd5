//! What the security tests need around real nsqd: a PKI made in the test (rcgen), and an
//! NSQ auth server (`--auth-http-address`). NSQ's auth protocol expects the operator's own
//! HTTP service, so this small one, granting each identity only its topics, is the real
//! thing: nsqd asks `GET /auth?secret=...&remote_ip=...&tls=...` and gets the identity and its
//! authorizations as JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A CA, a server certificate for `localhost`/`127.0.0.1`, one client certificate per name,
/// and an unrelated CA, as PEM files in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes the CA, the server certificate, and a client certificate for each of `clients`
    /// (`<name>.pem`, `<name>.key`).
    pub fn new(clients: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = ca("nsq-suite test CA");
        write("ca.pem", ca.pem());
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        for name in clients {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, *name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &ca).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        write("other-ca.pem", ca_pem("some other CA"));
        Pki { dir }
    }

    /// A file of the PKI (`ca.pem`, `server.pem`, `<client>.key`, `other-ca.pem`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// nsqd's flags for TLS on TCP with verified client certificates:
    /// `--tls-required=tcp-https` (plain HTTP stays for `/ping` and `/stats`) and
    /// `--tls-client-auth-policy=require-verify`.
    pub fn nsqd_args(&self) -> Vec<String> {
        vec![
            format!("--tls-cert={}", self.path("server.pem").display()),
            format!("--tls-key={}", self.path("server.key").display()),
            format!("--tls-root-ca-file={}", self.path("ca.pem").display()),
            "--tls-required=tcp-https".to_owned(),
            "--tls-client-auth-policy=require-verify".to_owned(),
        ]
    }

    /// A service's TLS flags, with the client certificate `client`.
    pub fn client_args(&self, client: &str) -> Vec<String> {
        vec![
            "--tls".to_owned(),
            format!("--tls-root-ca-file={}", self.path("ca.pem").display()),
            format!(
                "--tls-cert={}",
                self.path(&format!("{client}.pem")).display()
            ),
            format!(
                "--tls-key={}",
                self.path(&format!("{client}.key")).display()
            ),
        ]
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn ca_pem(name: &str) -> String {
    ca(name).pem()
}

/// What one secret is allowed: `(topic regex, channel regexes, permissions)`.
pub type Grants = Vec<(String, Vec<String>, Vec<String>)>;

/// One grant: `topic` (a regex, anchored by nsqd) with `channels`, and `permissions`
/// (`publish`, `subscribe`).
pub fn grant(
    topic: &str,
    channels: &[&str],
    permissions: &[&str],
) -> (String, Vec<String>, Vec<String>) {
    (
        topic.to_owned(),
        channels.iter().map(|c| (*c).to_owned()).collect(),
        permissions.iter().map(|p| (*p).to_owned()).collect(),
    )
}

/// An NSQ auth server on a free loopback port: each secret is one identity with its
/// grants; any other secret is refused (403).
pub struct AuthServer {
    /// `host:port`, for nsqd's `--auth-http-address`.
    pub address: String,
    task: tokio::task::JoinHandle<()>,
}

impl AuthServer {
    /// Starts the server: `identities` maps a secret to `(identity, grants)`.
    pub async fn start(identities: HashMap<String, (String, Grants)>) -> AuthServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let app = Router::new()
            .route("/auth", get(auth))
            .with_state(Arc::new(identities));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AuthServer { address, task }
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn auth(
    State(identities): State<Arc<HashMap<String, (String, Grants)>>>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, Json<serde_json::Value>) {
    let Some((identity, grants)) = q.get("secret").and_then(|s| identities.get(s)) else {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"message": "NOT_AUTHORIZED"})),
        );
    };
    let authorizations: Vec<serde_json::Value> = grants
        .iter()
        .map(|(topic, channels, permissions)| {
            serde_json::json!({"topic": topic, "channels": channels, "permissions": permissions})
        })
        .collect();
    (
        StatusCode::OK,
        Json(serde_json::json!({
            "ttl": 3600,
            "identity": identity,
            "identity_url": "",
            "authorizations": authorizations,
        })),
    )
}
