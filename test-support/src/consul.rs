//! A real Consul dev agent for tests, as `nsq::testkit` has real NSQ daemons.
//!
//! [`ConsulAgent::start`] runs the pinned Consul v1.13.9 (built by `scripts/build-consul.sh`
//! into `.consul-bin/`, or `$CONSUL_BIN_DIR`) as `consul agent -dev` bound to 127.0.0.1, on
//! free loopback ports (DNS and gRPC off), in a temporary working directory, and waits until
//! it has elected itself leader. Dropping the handle kills the process by its PID. A dev
//! agent keeps its state in memory: [`ConsulAgent::restart`] starts an empty one on the same
//! ports, as a real agent that lost its state would be.
//!
//! ```no_run
//! # async fn f() {
//! let consul = test_support::consul::ConsulAgent::start().await;
//! consul.register(serde_json::json!({"Name": "nsqlookupd", "Port": 4161})).await;
//! assert_eq!(consul.passing("nsqlookupd").await.len(), 1);
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use nsq::testkit::free_port;
use serde_json::Value;

/// The Consul version the suite is tested with (`scripts/build-consul.sh` pins it).
pub const VERSION: &str = "v1.13.9";

/// The pinned `consul` binary: `$CONSUL_BIN_DIR/consul`, else `<repo>/.consul-bin/consul`;
/// panics with what to do when it has not been built.
pub fn bin() -> PathBuf {
    let dir = match std::env::var_os("CONSUL_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|p| p.join(".consul-bin"))
            .unwrap_or_else(|| PathBuf::from(".consul-bin")),
    };
    let path = dir.join("consul");
    assert!(
        path.is_file(),
        "Consul binary {} not found: run scripts/build-consul.sh first (it builds Consul {VERSION} \
         into .consul-bin/)",
        path.display()
    );
    path
}

/// The ports of one agent.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
}

/// A running `consul agent -dev` on loopback; killed on drop.
pub struct ConsulAgent {
    child: Option<Child>,
    ports: Ports,
    /// The agent's working directory (nothing outside it is written).
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl ConsulAgent {
    /// Starts an agent on free ports and waits until it is leader (up to 30 s).
    pub async fn start() -> ConsulAgent {
        let mut last = String::new();
        for _ in 0..3 {
            let ports = Ports {
                http: free_port(),
                serf_lan: free_port(),
                serf_wan: free_port(),
                server: free_port(),
            };
            let mut agent = ConsulAgent {
                child: None,
                ports,
                dir: tempfile::tempdir().expect("temp dir"),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("http client"),
            };
            match agent.spawn().await {
                Ok(()) => return agent,
                Err(e) => last = e,
            }
        }
        panic!("consul did not start: {last}");
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let Ports {
            http,
            serf_lan,
            serf_wan,
            server,
        } = self.ports;
        let hcl = format!(
            "ports {{ http = {http}, dns = -1, grpc = -1, serf_lan = {serf_lan}, \
             serf_wan = {serf_wan}, server = {server} }}\ndisable_update_check = true"
        );
        let mut cmd = Command::new(bin());
        cmd.args(["agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1"])
            .arg(format!("-node=test-{http}"))
            .arg("-hcl")
            .arg(hcl)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if std::env::var_os("CONSUL_TEST_LOGS").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        self.child = Some(
            cmd.spawn()
                .map_err(|e| format!("cannot start consul: {e}"))?,
        );
        // 30 s: a dev agent elects itself in about a second; the margin is for a loaded
        // 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}/v1/status/leader", self.http_address());
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("consul exited during start-up: {status}"));
            }
            if let Ok(r) = self.client.get(&url).send().await {
                if let Ok(leader) = r.json::<String>().await {
                    if !leader.is_empty() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("consul had no leader at {url} within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:<http port>`, for `--consul-http-address`.
    pub fn http_address(&self) -> String {
        format!("127.0.0.1:{}", self.ports.http)
    }

    /// The process ID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and wait: the agent is gone, its port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts an empty agent again on the same ports (after [`ConsulAgent::kill`]).
    pub async fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..20 {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("consul did not restart: {last}");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_address())
    }

    /// Registers a service with the agent (`PUT /v1/agent/service/register`).
    pub async fn register(&self, service: Value) {
        let r = self
            .client
            .put(self.url("/v1/agent/service/register"))
            .json(&service)
            .send()
            .await
            .expect("consul answers");
        let status = r.status();
        assert!(
            status.is_success(),
            "register {service}: HTTP {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Registers an NSQ daemon the way the suite's Consul service definitions do: `name`
    /// (`nsqd`, `nsqlookupd`) at `http` (`host:port`) with an HTTP check on `/ping` every
    /// second, plus `meta` (e.g. `{"tcp_port": "4150"}` for nsqd).
    pub async fn register_nsq(&self, name: &str, id: &str, http: &str, meta: Value) {
        let (host, port) = http.rsplit_once(':').expect("host:port");
        let port: u16 = port.parse().expect("port");
        self.register(serde_json::json!({
            "ID": id,
            "Name": name,
            "Address": host,
            "Port": port,
            "Meta": meta,
            "Check": {
                "HTTP": format!("http://{http}/ping"),
                "Interval": "1s",
                "Timeout": "1s",
            },
        }))
        .await;
    }

    /// Deregisters a service instance by id.
    pub async fn deregister(&self, id: &str) {
        let r = self
            .client
            .put(self.url(&format!("/v1/agent/service/deregister/{id}")))
            .send()
            .await
            .expect("consul answers");
        assert!(
            r.status().is_success(),
            "deregister {id}: HTTP {}",
            r.status()
        );
    }

    /// The instances of `service` in the catalog with their aggregated check status
    /// (`passing`, `warning`, `critical`), by service id.
    pub async fn health(&self, service: &str) -> Vec<(String, String)> {
        let Ok(r) = self
            .client
            .get(self.url(&format!("/v1/health/service/{service}")))
            .send()
            .await
        else {
            return Vec::new();
        };
        let entries: Vec<Value> = r.json().await.unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                let id = e["Service"]["ID"].as_str().unwrap_or_default().to_owned();
                let statuses: Vec<&str> = e["Checks"]
                    .as_array()
                    .map(|cs| cs.iter().filter_map(|c| c["Status"].as_str()).collect())
                    .unwrap_or_default();
                let status = ["critical", "warning", "passing"]
                    .into_iter()
                    .find(|s| statuses.contains(s))
                    .unwrap_or("passing");
                (id, status.to_owned())
            })
            .collect()
    }

    /// The ids of the passing instances of `service`.
    pub async fn passing(&self, service: &str) -> Vec<String> {
        self.health(service)
            .await
            .into_iter()
            .filter(|(_, s)| s == "passing")
            .map(|(id, _)| id)
            .collect()
    }

    /// The registration of one instance with the local agent (`GET /v1/agent/service/<id>`),
    /// `None` when it is not registered.
    pub async fn agent_service(&self, id: &str) -> Option<Value> {
        let r = self
            .client
            .get(self.url(&format!("/v1/agent/service/{id}")))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The working directory of the agent.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
