//! Service discovery with Consul, against a real Consul v1.13.9 dev agent
//! (`scripts/build-consul.sh`), real NSQ daemons and the real service binaries.
//!
//! NSQ's daemons are registered the way `consul/local/nsq.hcl` registers them (nsqlookupd on
//! its HTTP port, nsqd with meta `tcp_port`, checks on `/ping`); the services are given only
//! `--consul-http-address` (and their HTTP port), nothing else to find NSQ with.
//!
//! Wall time: the four tests run two at a time on a 2-core machine (cargo's default test
//! threads); the longest is the first, which waits for Consul to reap a killed instance
//! (60-90 s, fixed by Consul, see there), while the three others (about 15-40 s each) run
//! beside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;
use test_support::consul::ConsulAgent;

/// Registers nsqlookupd `l` as `id`: the HTTP port as the service port, a check on /ping.
async fn register_lookupd(consul: &ConsulAgent, id: &str, l: &Nsqlookupd) {
    consul
        .register_nsq("nsqlookupd", id, &l.http_address(), json!({}))
        .await;
}

/// Registers nsqd `n` as `id`: the HTTP port as the service port (checked on /ping), the TCP
/// port in meta `tcp_port`, as consul/local/nsq.hcl does.
async fn register_nsqd(consul: &ConsulAgent, id: &str, n: &Nsqd) {
    let tcp_port = n.tcp_address().rsplit_once(':').unwrap().1.to_owned();
    consul
        .register_nsq(
            "nsqd",
            id,
            &n.http_address(),
            json!({ "tcp_port": tcp_port }),
        )
        .await;
}

/// The flags a service gets here: Consul's address, a fast check, a fast lookup.
fn consul_args(consul: &ConsulAgent) -> Vec<String> {
    vec![
        flag("consul-http-address", consul.http_address()),
        flag("consul-check-interval", "500ms"),
        flag("lookupd-poll-interval", "250ms"),
    ]
}

fn with(mut args: Vec<String>, more: &[String]) -> Vec<String> {
    args.extend_from_slice(more);
    args
}

/// `GET /ready`: status code and body.
async fn ready(service: &Service) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{}/ready", service.http))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// The Consul service id of a running service (from its registration's check URL).
async fn service_id(consul: &ConsulAgent, name: &str, service: &Service) -> String {
    let port = service.http.rsplit_once(':').unwrap().1;
    consul
        .health(name)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .find(|id| id.ends_with(&format!("-{port}")))
        .unwrap_or_else(|| panic!("{name} at {} is not registered", service.http))
}

/// Seqs per sensor in a logger output file.
fn seqs_by_sensor(output: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in read_jsonl(output) {
        by.entry(l["sensor_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(l["seq"].as_u64().unwrap());
    }
    for seqs in by.values_mut() {
        seqs.sort_unstable();
    }
    by
}

/// Asserts that `sensor`'s readings 1..=n are each in the output exactly once.
fn assert_exactly_once(output: &Path, sensor: &str, n: u64) {
    let by = seqs_by_sensor(output);
    let seqs = by.get(sensor).cloned().unwrap_or_default();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "every reading of {sensor} exactly once"
    );
}

/// Issue 16, test 1: every service registers and turns passing, deregisters on SIGTERM before
/// it exits; a `kill -9` instance turns critical, then Consul removes it.
#[tokio::test]
async fn every_service_registers_passes_and_leaves() {
    let consul = ConsulAgent::start().await;
    let lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    create_suite_channels(&nsqd).await;
    register_lookupd(&consul, "nsqlookupd-1", &lookupd).await;
    register_nsqd(&consul, "nsqd-1", &nsqd).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");

    let base = consul_args(&consul);
    let mut sensor = Service::start("sensor", &with(base.clone(), &[flag("rate", 20)]));
    let mut worker = Service::start("worker", &with(base.clone(), &[flag("worker-id", "w1")]));
    let mut doomed = Service::start("worker", &with(base.clone(), &[flag("worker-id", "w9")]));
    let mut logger = Service::start(
        "logger",
        &with(base.clone(), &[flag("output", output.display())]),
    );
    for s in [&mut sensor, &mut worker, &mut doomed, &mut logger] {
        s.wait_healthy().await;
    }
    // 30 s: each is ready once connected to nsqd (a second or two here), and Consul checks
    // every 500 ms; the margin is for a loaded 2-core machine.
    let agent = &consul;
    wait_until(
        "all four pass in Consul",
        Duration::from_secs(30),
        || async move {
            agent.passing("sensor").await.len() == 1
                && agent.passing("worker").await.len() == 2
                && agent.passing("logger").await.len() == 1
        },
    )
    .await;
    let doomed_id = service_id(&consul, "worker", &doomed).await;
    assert!(doomed_id.starts_with("worker-w9-"), "{doomed_id}");
    let registration = consul.agent_service(&doomed_id).await.unwrap();
    let address = registration["Address"].as_str().unwrap();
    assert_eq!(
        format!("{address}:{}", registration["Port"]),
        doomed.http,
        "registered at its HTTP address"
    );

    // kill -9: no deregistration; the check on /ready fails at its next run (500 ms).
    let killed_at = Instant::now();
    doomed.kill9();
    let critical = (doomed_id.clone(), "critical".to_owned());
    let critical = &critical;
    wait_until(
        "the killed worker turns critical",
        Duration::from_secs(20),
        || async move { agent.health("worker").await.contains(critical) },
    )
    .await;

    // SIGTERM: each deregisters before it exits, so the registration is gone at the exit.
    let ids = [
        service_id(&consul, "sensor", &sensor).await,
        service_id(&consul, "worker", &worker).await,
        service_id(&consul, "logger", &logger).await,
    ];
    for (s, id) in [&mut sensor, &mut worker, &mut logger]
        .into_iter()
        .zip(&ids)
    {
        let status = s.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{} exit: {status}", s.name);
        assert!(
            consul.agent_service(id).await.is_none(),
            "{id} still registered after {} exited\n{}",
            s.name,
            s.logs().join("\n")
        );
        assert!(
            s.wait_logged(&["deregistered from Consul"]).await,
            "{}",
            s.name
        );
    }

    // Consul removes the killed one once its check has been critical for
    // DeregisterCriticalServiceAfter: 1m, the least Consul 1.13 accepts (shorter values are
    // raised to it, so the services refuse them), found by its reaper, which runs every 30 s
    // (neither is configurable). So: critical within about a second of the kill, removed
    // 60-90 s later. 150 s leaves a minute of margin; Consul's timers do not slow down much
    // on a loaded machine, its reaper runs on a wall-clock ticker.
    wait_until(
        "Consul removes the killed worker",
        Duration::from_secs(150).saturating_sub(killed_at.elapsed()),
        || async move { agent.health("worker").await.is_empty() },
    )
    .await;
}

/// Issue 16, test 2: given only Consul's address, the worker consumes through the nsqlookupd
/// Consul lists, and the suite runs end to end with nothing else configured.
#[tokio::test]
async fn the_suite_runs_with_only_the_consul_address() {
    let consul = ConsulAgent::start().await;
    let lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    create_suite_channels(&nsqd).await;
    register_lookupd(&consul, "nsqlookupd-1", &lookupd).await;
    register_nsqd(&consul, "nsqd-1", &nsqd).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");
    let only = vec![flag("consul-http-address", consul.http_address())];

    let mut logger = Service::start(
        "logger",
        &with(only.clone(), &[flag("output", output.display())]),
    );
    let mut worker = Service::start("worker", &only);
    for s in [&mut logger, &mut worker] {
        s.wait_healthy().await;
    }
    let mut sensor = Service::start(
        "sensor",
        &with(
            only.clone(),
            &[
                flag("sensor-id", "s1"),
                flag("count", 300),
                flag("rate", 100),
            ],
        ),
    );
    // 60 s: 300 readings at 100/s take 3 s; the rest is discovery (Consul answers at once,
    // nsqlookupd is asked every 5 s by default) and a loaded machine.
    let status = sensor.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "sensor: {status}\n{}",
        sensor.logs().join("\n")
    );
    wait_until("300 results logged", Duration::from_secs(60), || {
        let n = count_lines(&output);
        async move { n >= 300 }
    })
    .await;
    assert_exactly_once(&output, "s1", 300);
    assert!(
        worker.wait_logged(&["passing instances in Consul"]).await,
        "the worker found nsqlookupd in Consul\n{}",
        worker.logs().join("\n")
    );
}

/// Issue 16, test 3: nsqlookupd moves (a second one registered, the first deregistered and
/// killed); the consumers follow: a new nsqd that only the second nsqlookupd knows is
/// consumed, and nothing is lost.
#[tokio::test]
async fn consumers_follow_a_moved_nsqlookupd() {
    let consul = ConsulAgent::start().await;
    let mut l1 = Nsqlookupd::start().await;
    let l2 = Nsqlookupd::start().await;
    let n1 = Nsqd::builder().lookupd(&l1).lookupd(&l2).start().await;
    create_suite_channels(&n1).await;
    register_lookupd(&consul, "nsqlookupd-1", &l1).await;
    register_nsqd(&consul, "nsqd-1", &n1).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");
    let base = consul_args(&consul);

    let mut logger = Service::start(
        "logger",
        &with(base.clone(), &[flag("output", output.display())]),
    );
    let mut worker = Service::start("worker", &base);
    for s in [&mut logger, &mut worker] {
        s.wait_healthy().await;
    }
    let mut s1 = Service::start(
        "sensor",
        &with(
            base.clone(),
            &[
                flag("sensor-id", "s1"),
                flag("count", 200),
                flag("rate", 50),
            ],
        ),
    );
    // 30 s: the first results within seconds of the start, with margin for a loaded machine.
    wait_until(
        "results flow through nsqlookupd 1",
        Duration::from_secs(30),
        || {
            let n = count_lines(&output);
            async move { n >= 20 }
        },
    )
    .await;

    // The move: the second registered, the first deregistered, then gone.
    register_lookupd(&consul, "nsqlookupd-2", &l2).await;
    consul.deregister("nsqlookupd-1").await;
    l1.kill();
    // A new nsqd that only nsqlookupd 2 knows, fed by a second sensor (its nsqd given).
    let n2 = Nsqd::builder().lookupd(&l2).start().await;
    create_suite_channels(&n2).await;
    let mut s2 = Service::start(
        "sensor",
        &with(
            base.clone(),
            &[
                flag("nsqd-tcp-address", n2.tcp_address()),
                flag("sensor-id", "s2"),
                flag("count", 100),
                flag("rate", 50),
            ],
        ),
    );
    for s in [&mut s1, &mut s2] {
        let status = s.wait_exit(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "{}: {status}\n{}",
            s.name,
            s.logs().join("\n")
        );
    }
    // 30 s: the worker learns of nsqlookupd 2 from a blocking query at once, asks it every
    // 250 ms, and finds n2 there; the margin is for a loaded machine.
    wait_until(
        "every reading of both sensors logged",
        Duration::from_secs(30),
        || {
            let n = count_lines(&output);
            async move { n >= 300 }
        },
    )
    .await;
    assert_exactly_once(&output, "s1", 200);
    assert_exactly_once(&output, "s2", 100);
    assert!(
        worker
            .logs()
            .iter()
            .any(|l| l.contains("nsqlookupd addresses replaced") && l.contains(&l2.http_address())),
        "the worker moved to nsqlookupd 2\n{}",
        worker.logs().join("\n")
    );
}

/// Issue 16, test 4: Consul stopped for 10 s and started again (empty, as a dev agent is):
/// no service dies, `/ready` says what is wrong meanwhile, readings keep flowing from the last
/// known addresses, and every service is registered again afterwards.
#[tokio::test]
async fn a_consul_outage_is_not_fatal() {
    let mut consul = ConsulAgent::start().await;
    let lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    create_suite_channels(&nsqd).await;
    register_lookupd(&consul, "nsqlookupd-1", &lookupd).await;
    register_nsqd(&consul, "nsqd-1", &nsqd).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");
    let base = consul_args(&consul);

    let mut logger = Service::start(
        "logger",
        &with(base.clone(), &[flag("output", output.display())]),
    );
    let mut worker = Service::start("worker", &base);
    let mut sensor = Service::start(
        "sensor",
        &with(base.clone(), &[flag("sensor-id", "s1"), flag("rate", 20)]),
    );
    for s in [&mut logger, &mut worker, &mut sensor] {
        s.wait_healthy().await;
    }
    wait_until("results flow", Duration::from_secs(30), || {
        let n = count_lines(&output);
        async move { n >= 20 }
    })
    .await;

    consul.kill();
    let stopped = Instant::now();
    let before = count_lines(&output);
    // 10 s: the services notice at their next request (a blocking query fails at once when
    // the agent's connection closes).
    let w = &worker;
    wait_until(
        "/ready names the Consul outage",
        Duration::from_secs(10),
        || async move {
            let (status, body) = ready(w).await;
            status == 503
                && body["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("Consul"))
        },
    )
    .await;
    // Readings keep flowing meanwhile: 20/s for the rest of the 10 s.
    wait_until(
        "results flow without Consul",
        Duration::from_secs(10),
        || {
            let n = count_lines(&output);
            async move { n >= before + 40 }
        },
    )
    .await;
    // The outage itself is the scenario: 10 s of it, whatever the services do.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    for s in [&mut logger, &mut worker, &mut sensor] {
        assert!(
            s.try_exit().is_none(),
            "{} died without Consul\n{}",
            s.name,
            s.logs().join("\n")
        );
    }

    // Back, empty: NSQ's daemons come back from their definitions (here: registered again),
    // the services register themselves again. 30 s: each checks its registration every 5 s
    // and retries with a backoff capped at 10 s.
    consul.restart().await;
    register_lookupd(&consul, "nsqlookupd-1", &lookupd).await;
    register_nsqd(&consul, "nsqd-1", &nsqd).await;
    let agent = &consul;
    wait_until(
        "every service registered and passing again",
        Duration::from_secs(30),
        || async move {
            agent.passing("sensor").await.len() == 1
                && agent.passing("worker").await.len() == 1
                && agent.passing("logger").await.len() == 1
        },
    )
    .await;
    assert_eq!(ready(&worker).await.0, 200, "ready again");

    let status = sensor.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "sensor: {status}");
    // "sensor stopped ... confirmed=N": the readings nsqd accepted.
    let confirmed: u64 = sensor
        .logs()
        .iter()
        .filter(|l| l.contains("sensor stopped"))
        .find_map(|l| {
            let rest = l.split("confirmed=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no confirmed count\n{}", sensor.logs().join("\n")));
    let seqs = || seqs_by_sensor(&output).remove("s1").unwrap_or_default();
    // 30 s: the last readings are a hop or two behind; margin for a loaded machine.
    wait_until(
        "every confirmed reading logged",
        Duration::from_secs(30),
        || {
            let n = seqs().len() as u64;
            async move { n >= confirmed }
        },
    )
    .await;
    let s = seqs();
    let max = s.last().copied().unwrap_or(0);
    assert!(
        max >= confirmed,
        "logged up to {max} of {confirmed} confirmed"
    );
    assert_eq!(
        s,
        (1..=max).collect::<Vec<_>>(),
        "no reading lost, none twice"
    );
}
