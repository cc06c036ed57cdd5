//! The suite with TLS and AUTH on, against real nsqd:
//!
//! - `--tls-required` with `--tls-client-auth-policy=require-verify`, certificates made by
//!   the test: the suite runs end to end with each service presenting its own certificate;
//! - `--auth-http-address` pointing at an auth server that grants each identity only its
//!   topics: the suite runs end to end, and a publish outside an identity's grants is
//!   refused by nsqd;
//! - a wrong CA, and a wrong secret: the service says why in `/ready` (503), keeps running
//!   and keeps retrying.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use e2e::secure::{grant, AuthServer, Grants, Pki};
use e2e::*;
use nsq::{Producer, ProducerConfig};

/// Readings taken in each end-to-end run.
const COUNT: u64 = 500;

/// Starts logger, worker and sensor (`extra(name)` are each one's extra flags), waits until
/// every reading is logged exactly once, and stops them (each must exit 0).
async fn run_suite(lookupd: &Nsqlookupd, nsqd: &Nsqd, extra: impl Fn(&str) -> Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");
    let with = |name: &str, mut args: Vec<String>| {
        args.extend(extra(name));
        Service::start(name, &args)
    };
    let mut logger = with(
        "logger",
        vec![
            flag("lookupd-http-address", lookupd.http_address()),
            flag("lookupd-poll-interval", "250ms"),
            flag("replay-nsqd-tcp-address", nsqd.tcp_address()),
            flag("output", output.display()),
        ],
    );
    let mut worker = with(
        "worker",
        vec![
            flag("lookupd-http-address", lookupd.http_address()),
            flag("lookupd-poll-interval", "250ms"),
            flag("destination-nsqd-tcp-address", nsqd.tcp_address()),
        ],
    );
    for s in [&mut logger, &mut worker] {
        s.wait_healthy().await;
    }
    wait_ready(&logger).await;
    wait_ready(&worker).await;
    let mut sensor = with(
        "sensor",
        vec![
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("sensor-id", "s1"),
            flag("count", COUNT),
            flag("rate", 0),
        ],
    );
    let status = sensor.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "sensor: {status}\n{}",
        sensor.logs().join("\n")
    );
    wait_until("every reading logged", Duration::from_secs(60), || {
        let n = count_lines(&output);
        async move { n as u64 >= COUNT }
    })
    .await;
    let lines = read_jsonl(&output);
    let seqs: HashSet<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(lines.len() as u64, COUNT, "one line per reading");
    assert_eq!(seqs, (1..=COUNT).collect::<HashSet<u64>>());
    for s in [&mut worker, &mut logger] {
        let status = s.terminate(Duration::from_secs(20)).await;
        assert!(
            status.success(),
            "{}: {status}\n{}",
            s.name,
            s.logs().join("\n")
        );
    }
}

/// `GET /ready` of a service: the status and the body. The future does not borrow `s`, so
/// that it can be made inside `wait_until`'s closure.
fn ready(s: &Service) -> impl std::future::Future<Output = (u16, String)> {
    let url = format!("http://{}/ready", s.http);
    async move {
        match reqwest::get(url).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }
}

/// Waits until a service is ready.
async fn wait_ready(s: &Service) {
    wait_until(
        &format!("{} ready", s.name),
        Duration::from_secs(30),
        || async { ready(s).await.0 == 200 },
    )
    .await;
}

/// Waits until `/ready` answers 503 with a reason containing `needle`, and checks that the
/// service keeps running and retrying meanwhile.
async fn wait_refused(s: &mut Service, needle: &str) -> String {
    wait_until(
        &format!("{} not ready because of {needle}", s.name),
        Duration::from_secs(30),
        || {
            let reason = ready(s);
            async move {
                let (status, body) = reason.await;
                status == 503 && body.contains(needle)
            }
        },
    )
    .await;
    let (status, body) = ready(s).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        s.try_exit().is_none(),
        "{} exited:\n{}",
        s.name,
        s.logs().join("\n")
    );
    body
}

#[tokio::test]
async fn tls_with_verified_client_certificates_end_to_end() {
    let pki = Pki::new(&["sensor", "worker", "logger"]);
    let lookupd = Nsqlookupd::start().await;
    let mut builder = Nsqd::builder().lookupd(&lookupd);
    for arg in pki.nsqd_args() {
        builder = builder.arg(arg);
    }
    let nsqd = builder.start().await;
    create_suite_channels(&nsqd).await;
    run_suite(&lookupd, &nsqd, |name| pki.client_args(name)).await;
}

#[tokio::test]
async fn a_wrong_ca_or_no_client_certificate_is_refused_with_the_reason() {
    let pki = Pki::new(&["worker"]);
    let lookupd = Nsqlookupd::start().await;
    let mut builder = Nsqd::builder().lookupd(&lookupd);
    for arg in pki.nsqd_args() {
        builder = builder.arg(arg);
    }
    let nsqd = builder.start().await;
    create_suite_channels(&nsqd).await;

    // Trusting another CA: nsqd's certificate is not accepted.
    let mut worker = Service::start(
        "worker",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("destination-nsqd-tcp-address", nsqd.tcp_address()),
            "--tls".to_owned(),
            flag("tls-root-ca-file", pki.path("other-ca.pem").display()),
            flag("tls-cert", pki.path("worker.pem").display()),
            flag("tls-key", pki.path("worker.key").display()),
        ],
    );
    worker.wait_healthy().await;
    let reason = wait_refused(&mut worker, "certificate").await;
    println!("wrong CA: /ready {reason}");
    let retried = worker
        .logs()
        .iter()
        .filter(|l| l.contains("reconnect") || l.contains("Reconnect"))
        .count();
    assert!(
        retried >= 1,
        "keeps retrying:\n{}",
        worker.logs().join("\n")
    );
    let status = worker.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");

    // No TLS at all against --tls-required: nsqd's own refusal is the reason.
    let mut plain = Service::start(
        "worker",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("destination-nsqd-tcp-address", nsqd.tcp_address()),
        ],
    );
    plain.wait_healthy().await;
    let reason = wait_refused(&mut plain, "TLS").await;
    println!("no TLS: /ready {reason}");
    let status = plain.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
}

/// Each service's identity and grants: exactly the topics and channels it uses.
fn identities() -> HashMap<String, (String, Grants)> {
    let any = &[".*"];
    HashMap::from([
        (
            "sensor-secret".to_owned(),
            (
                "sensor".to_owned(),
                vec![
                    grant("^sensor_data$", any, &["publish"]),
                    grant("^sensor_status$", any, &["publish"]),
                    grant("^sensor_replay_unavailable$", any, &["publish"]),
                    grant(
                        "^sensor_replay$",
                        &["^sensor-.*#ephemeral$"],
                        &["subscribe"],
                    ),
                    grant(
                        "^sensor_complete$",
                        &["^sensor-.*#ephemeral$"],
                        &["subscribe"],
                    ),
                ],
            ),
        ),
        (
            "worker-secret".to_owned(),
            (
                "worker".to_owned(),
                vec![
                    grant("^sensor_data$", &["^worker$"], &["subscribe"]),
                    grant("^results$", any, &["publish"]),
                    grant("^sensor_data\\.dead$", any, &["publish"]),
                ],
            ),
        ),
        (
            "logger-secret".to_owned(),
            (
                "logger".to_owned(),
                vec![
                    grant("^results$", &["^logger$"], &["subscribe"]),
                    grant("^sensor_status$", &["^logger$"], &["subscribe"]),
                    grant("^sensor_replay_unavailable$", &["^logger$"], &["subscribe"]),
                    grant("^sensor_replay$", any, &["publish"]),
                    grant("^sensor_complete$", any, &["publish"]),
                ],
            ),
        ),
    ])
}

#[tokio::test]
async fn auth_grants_each_identity_only_its_topics() {
    let auth = AuthServer::start(identities()).await;
    let lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder()
        .lookupd(&lookupd)
        .arg(format!("--auth-http-address={}", auth.address))
        .start()
        .await;
    create_suite_channels(&nsqd).await;
    let dir = tempfile::tempdir().unwrap();
    // The secrets come from files, the way Docker secrets do.
    let secret_file = |name: &str| {
        let path = dir.path().join(format!("{name}.secret"));
        std::fs::write(&path, format!("{name}-secret\n")).unwrap();
        path
    };
    let files: HashMap<String, std::path::PathBuf> = ["sensor", "worker", "logger"]
        .into_iter()
        .map(|n| (n.to_owned(), secret_file(n)))
        .collect();
    run_suite(&lookupd, &nsqd, |name| {
        vec![flag("auth-secret-file", files[name].display())]
    })
    .await;

    // A forged announcement with the worker's secret: not in its grants, nsqd refuses it.
    let forger = Producer::connect(
        &nsqd.tcp_address(),
        ProducerConfig {
            connection: nsq::ConnectionConfig {
                auth_secret: Some("worker-secret".to_owned()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    // The same secret may publish results. (Asked first: nsqd closes the connection after
    // a refusal, so a publish right after one would race the reconnection.)
    forger.publish("results", &b"allowed"[..]).await.unwrap();
    let refused = forger
        .publish("sensor_status", &b"forged"[..])
        .await
        .expect_err("nsqd refuses a publish outside the identity's grants");
    assert!(
        refused.to_string().contains("E_UNAUTHORIZED"),
        "nsqd's reason: {refused}"
    );
    forger.close().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_the_reason() {
    let auth = AuthServer::start(identities()).await;
    let nsqd = Nsqd::builder()
        .arg(format!("--auth-http-address={}", auth.address))
        .start()
        .await;
    create_suite_channels(&nsqd).await;
    let mut sensor = Service::start(
        "sensor",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("auth-secret", "not-the-secret"),
        ],
    );
    sensor.wait_healthy().await;
    let reason = wait_refused(&mut sensor, "E_AUTH_FAILED").await;
    println!("wrong secret: /ready {reason}");
    // Printed nowhere: not in its logs, not in its configuration.
    assert!(
        !sensor.logs().iter().any(|l| l.contains("not-the-secret")),
        "{}",
        sensor.logs().join("\n")
    );
    let status = sensor.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");

    let mut logger = Service::start(
        "logger",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("auth-secret", "not-the-secret"),
        ],
    );
    logger.wait_healthy().await;
    let reason = wait_refused(&mut logger, "E_AUTH_FAILED").await;
    println!("wrong secret (logger): /ready {reason}");
    let status = logger.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
}
