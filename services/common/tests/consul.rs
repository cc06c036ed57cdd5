//! `suite_common::consul` against a real Consul v1.13.9 dev agent (`scripts/build-consul.sh`):
//! registration with a passing check, re-registration after the agent lost its state,
//! deregistration, blocking-query discovery, and an unreachable agent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::time::Duration;

use clap::Parser;
use suite_common::consul::{ConsulArgs, Discovery, Registration, Watched};
use test_support::{consul::ConsulAgent, wait_until};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    consul: ConsulArgs,
}

fn args(consul: &ConsulAgent) -> ConsulArgs {
    Cli::try_parse_from([
        "svc",
        &format!("--consul-http-address={}", consul.http_address()),
        "--consul-check-interval=500ms",
        "--consul-tag=test",
    ])
    .unwrap()
    .consul
}

/// An HTTP port whose `/ready` answers 200, for the check.
async fn ready_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/ready", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Registers, turns passing, comes back after the agent restarted empty, and is gone after
/// `deregister`. Bounds: the check runs every 500 ms and a dev agent syncs a status change to
/// its catalog at once, so passing comes within a second; 20 s is the margin for a loaded
/// machine. Re-registration comes within `RESYNC` (5 s) plus a backoff of at most 10 s after
/// the restart: 30 s.
#[tokio::test]
async fn registers_passes_comes_back_and_deregisters() {
    let mut consul = ConsulAgent::start().await;
    let http = ready_port().await;
    let args = args(&consul);
    let discovery = Discovery::from_args(&args).unwrap().unwrap();
    let registration = Registration::new("testsvc", "t/1", http, &args);
    let id = registration.id.clone();
    discovery.keep_registered(registration);

    let (agent, want) = (&consul, std::slice::from_ref(&id));
    wait_until(
        "the service passes",
        Duration::from_secs(20),
        || async move { agent.passing("testsvc").await == want },
    )
    .await;
    let service = consul.agent_service(&id).await.unwrap();
    assert_eq!(service["Tags"], serde_json::json!(["test"]));
    assert_eq!(service["Port"], http.port());
    assert_eq!(discovery.problem(), None);

    consul.restart().await;
    assert!(consul.agent_service(&id).await.is_none(), "a fresh agent");
    let (agent, want) = (&consul, std::slice::from_ref(&id));
    wait_until(
        "registered again after the agent restart",
        Duration::from_secs(30),
        || async move { agent.passing("testsvc").await == want },
    )
    .await;

    discovery.deregister().await;
    assert!(consul.agent_service(&id).await.is_none());
    assert!(consul.health("testsvc").await.is_empty());
}

/// The watched list follows registrations at once (blocking queries: the bound, 10 s, is a
/// third of the 30 s a query waits when nothing changes, so passing it shows the change woke
/// the query rather than a new poll), skips critical instances, and survives an agent outage
/// with the last list and a problem for `/ready`.
#[tokio::test]
async fn watch_follows_changes_and_keeps_the_last_list_without_consul() {
    let mut consul = ConsulAgent::start().await;
    let discovery = Discovery::from_args(&args(&consul)).unwrap().unwrap();
    let mut lookupds = discovery.watch(Watched::Nsqlookupd);
    let mut nsqd = discovery.nsqd_for_producer(Some("fixed:4150".into()));

    consul
        .register(serde_json::json!({"ID": "l1", "Name": "nsqlookupd", "Address": "127.0.0.1", "Port": 4161}))
        .await;
    consul
        .register(serde_json::json!({"ID": "n1", "Name": "nsqd", "Address": "127.0.0.1", "Port": 4151, "Meta": {"tcp_port": "4150"}}))
        .await;
    let within = Duration::from_secs(10);
    tokio::time::timeout(within, lookupds.wait_for(|l| *l == ["127.0.0.1:4161"]))
        .await
        .expect("the first nsqlookupd listed")
        .unwrap();
    tokio::time::timeout(
        within,
        nsqd.wait_for(|l| *l == ["fixed:4150", "127.0.0.1:4150"]),
    )
    .await
    .expect("fixed first, then Consul's nsqd on its tcp_port")
    .unwrap();

    // A second lookupd whose check fails (nothing listens) stays out of the list.
    let dead = test_support::consul::free_port();
    consul
        .register(serde_json::json!({
            "ID": "l2", "Name": "nsqlookupd", "Address": "127.0.0.1", "Port": dead,
            "Check": {"HTTP": format!("http://127.0.0.1:{dead}/ping"), "Interval": "500ms", "Timeout": "500ms"}
        }))
        .await;
    consul
        .register(serde_json::json!({"ID": "l3", "Name": "nsqlookupd", "Address": "127.0.0.1", "Port": 4261}))
        .await;
    tokio::time::timeout(
        within,
        lookupds.wait_for(|l| *l == ["127.0.0.1:4161", "127.0.0.1:4261"]),
    )
    .await
    .expect("the passing lookupd added, the critical one not")
    .unwrap();
    consul.deregister("l1").await;
    tokio::time::timeout(within, lookupds.wait_for(|l| *l == ["127.0.0.1:4261"]))
        .await
        .expect("the deregistered lookupd dropped")
        .unwrap();
    assert_eq!(discovery.problem(), None);

    consul.kill();
    // 20 s: a refused connection fails at once; the next try is within the backoff.
    let d = &discovery;
    wait_until(
        "/ready's problem names Consul",
        Duration::from_secs(20),
        || async move { d.problem().is_some_and(|p| p.contains("unreachable")) },
    )
    .await;
    assert_eq!(
        *lookupds.borrow(),
        ["127.0.0.1:4261"],
        "the last list is kept"
    );

    consul.restart().await;
    // The fresh agent lists nothing: the list follows, and the problem clears. 30 s: the
    // retry backoff is capped at 10 s.
    tokio::time::timeout(Duration::from_secs(30), lookupds.wait_for(Vec::is_empty))
        .await
        .expect("the fresh agent's empty list")
        .unwrap();
    wait_until(
        "the problem clears",
        Duration::from_secs(30),
        || async move { d.problem().is_none() },
    )
    .await;
}
