//! TLS against nsqd started with `--tls-required`, with a CA made inside the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nsq::testkit::Nsqd;
use nsq::{Consumer, Event, Producer, TlsSettings};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for localhost/127.0.0.1 signed by it, and an unrelated CA.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nsq-suite test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();

        let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        other_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "some other CA");
        other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other =
            CertifiedIssuer::self_signed(other_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other.pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

async fn tls_nsqd(pki: &Pki) -> Nsqd {
    Nsqd::builder()
        .arg(format!("--tls-cert={}", pki.path("server.pem").display()))
        .arg(format!("--tls-key={}", pki.path("server.key").display()))
        .arg("--tls-required=tcp-https") // TCP needs TLS; plain HTTP stays for /ping and /stats
        .start()
        .await
}

fn tls_producer(nsqd: &Nsqd, ca: &Path, server_name: Option<&str>) -> Producer {
    let mut config = producer_config();
    config.publish_timeout = Duration::from_secs(3);
    config.connection.tls =
        Some(TlsSettings::new(ca, None, server_name.map(str::to_string)).unwrap());
    Producer::connect(&nsqd.tcp_address(), config).unwrap()
}

#[tokio::test]
async fn connects_with_the_right_ca_and_round_trips() {
    init_logs();
    let pki = Pki::new();
    let nsqd = tls_nsqd(&pki).await;
    let producer = tls_producer(&nsqd, &pki.path("ca.pem"), None);
    producer.publish("secure", body(1, 16)).await.unwrap();

    let mut config = consumer_config(&[nsqd.tcp_address()], 10);
    config.connection.tls = Some(TlsSettings::new(&pki.path("ca.pem"), None, None).unwrap());
    let (consumer, mut messages) = Consumer::new("secure", "c", config).unwrap();
    let m = recv(&mut messages, Duration::from_secs(5)).await;
    assert_eq!(number(m.body()), 1);
    m.finish();
    let stats = nsqd.channel_stats("secure", "c").await.unwrap();
    assert_eq!(
        stats["clients"][0]["tls"], true,
        "nsqd reports a TLS client"
    );
    consumer.close().await;
    producer.close().await;
}

async fn expect_tls_refusal(producer: &Producer) -> String {
    let mut events = producer.events();
    let e = producer.publish("secure", body(1, 16)).await.unwrap_err();
    assert!(!producer.is_connected());
    // The reason is surfaced as an event.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(Event::Disconnected { reason, .. })) => {
                println!("refused: {reason} (publish: {e})");
                return reason;
            }
            Ok(Ok(_)) => continue,
            other => panic!("no disconnect event: {other:?}"),
        }
    }
}

#[tokio::test]
async fn refuses_a_certificate_from_another_ca() {
    init_logs();
    let pki = Pki::new();
    let nsqd = tls_nsqd(&pki).await;
    let producer = tls_producer(&nsqd, &pki.path("other-ca.pem"), None);
    let reason = expect_tls_refusal(&producer).await;
    assert!(reason.contains("TLS"), "{reason}");
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    producer.close().await;
}

#[tokio::test]
async fn refuses_a_certificate_for_another_host_name() {
    init_logs();
    let pki = Pki::new();
    let nsqd = tls_nsqd(&pki).await;
    let producer = tls_producer(&nsqd, &pki.path("ca.pem"), Some("nsqd.example.org"));
    let reason = expect_tls_refusal(&producer).await;
    assert!(reason.contains("TLS"), "{reason}");
    assert!(
        reason.contains("NotValidForName") || reason.contains("name"),
        "{reason}"
    );
    producer.close().await;
}

#[tokio::test]
async fn without_tls_nsqd_with_tls_required_refuses_clearly() {
    init_logs();
    let pki = Pki::new();
    let nsqd = tls_nsqd(&pki).await;
    let mut config = producer_config();
    config.publish_timeout = Duration::from_secs(2);
    let producer = Producer::connect(&nsqd.tcp_address(), config).unwrap();
    let mut events = producer.events();
    let e = producer.publish("secure", body(1, 16)).await.unwrap_err();
    println!("plain client against --tls-required: {e}");
    match &e {
        nsq::PublishError::Rejected { code, text } => {
            assert_eq!(code, "E_INVALID");
            assert!(text.contains("TLS required"), "{text}");
        }
        other => panic!("expected nsqd's E_INVALID, got {other}"),
    }
    // The disconnect event carries nsqd's reason too.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(Event::Disconnected { reason, .. })) => {
                assert!(reason.contains("TLS required"), "{reason}");
                break;
            }
            Ok(Ok(_)) => continue,
            other => panic!("no disconnect event: {other:?}"),
        }
    }
    producer.close().await;
}
