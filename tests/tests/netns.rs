//! Separate hosts: NSQ in one network namespace, the services in another, joined by a veth
//! pair with private addresses made by this test. nsqd's `--broadcast-address` and lookupd
//! discovery are exercised across a real interface, not only 127.0.0.1.
//!
//! Skips where namespaces cannot be created (no root, no `ip`, no CAP_SYS_ADMIN), visibly:
//! [`skip`] prints a `SKIPPED` line and records it for `scripts/test.sh`'s summary. Traffic
//! only ever goes to the two addresses the test assigns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::*;

/// The two namespaces and their veth pair; deleted on drop.
struct Hosts {
    nsq_ns: String,
    app_ns: String,
    nsq_ip: String,
    app_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    fn create() -> Result<Hosts, String> {
        let id = std::process::id();
        let net = id % 250 + 1;
        let hosts = Hosts {
            nsq_ns: format!("nsqs-nsq-{id}"),
            app_ns: format!("nsqs-app-{id}"),
            nsq_ip: format!("10.231.{net}.1"),
            app_ip: format!("10.231.{net}.2"),
        };
        ip(&["netns", "add", &hosts.nsq_ns])?;
        ip(&["netns", "add", &hosts.app_ns])?;
        let (va, vb) = (format!("vn{id}"), format!("va{id}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &hosts.nsq_ns])?;
        ip(&["link", "set", &vb, "netns", &hosts.app_ns])?;
        for (ns, dev, addr) in [
            (&hosts.nsq_ns, &va, &hosts.nsq_ip),
            (&hosts.app_ns, &vb, &hosts.app_ip),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// Runs `program args…` inside namespace `ns` (`ip netns exec` execs it: same PID).
    fn run(&self, ns: &str, name: &str, program: &Path, args: &[String]) -> Service {
        let mut all = vec![
            "netns".to_string(),
            "exec".to_string(),
            ns.to_string(),
            program.display().to_string(),
        ];
        all.extend_from_slice(args);
        Service::start_program(name, Path::new("/usr/sbin/ip"), &all, &[], String::new())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.nsq_ns]);
        let _ = ip(&["netns", "del", &self.app_ns]);
    }
}

#[tokio::test]
async fn services_in_their_own_namespace_discover_nsqd_across_a_veth() {
    const TEST: &str = "netns::services_in_their_own_namespace_discover_nsqd_across_a_veth";
    if !Path::new("/usr/sbin/ip").is_file() {
        skip(TEST, "/usr/sbin/ip (iproute2) is not installed");
        return;
    }
    let hosts = match Hosts::create() {
        Ok(h) => h,
        Err(reason) => {
            skip(
                TEST,
                &format!("cannot create network namespaces here: {reason}"),
            );
            return;
        }
    };
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");
    let (nsq_ip, ns) = (&hosts.nsq_ip, hosts.nsq_ns.clone());
    let bin = |n: &str| -> PathBuf { nsq::testkit::bin(n) };

    let _lookupd = hosts.run(
        &ns,
        "nsqlookupd",
        &bin("nsqlookupd"),
        &[
            flag("tcp-address", format!("{nsq_ip}:4160")),
            flag("http-address", format!("{nsq_ip}:4161")),
            flag("broadcast-address", nsq_ip),
        ],
    );
    let _nsqd = hosts.run(
        &ns,
        "nsqd",
        &bin("nsqd"),
        &[
            flag("tcp-address", format!("{nsq_ip}:4150")),
            flag("http-address", format!("{nsq_ip}:4151")),
            "--https-address=".to_string(),
            flag("lookupd-tcp-address", format!("{nsq_ip}:4160")),
            // What lookupd hands to consumers: the address on the shared link.
            flag("broadcast-address", nsq_ip),
            flag("data-path", data.path().display()),
        ],
    );
    let app = hosts.app_ns.clone();
    let lookupd_http = flag("lookupd-http-address", format!("{nsq_ip}:4161"));
    let nsqd_tcp = format!("{nsq_ip}:4150");
    let local_http = |port: u16| flag("http-address", format!("127.0.0.1:{port}"));
    let mut logger = hosts.run(
        &app,
        "logger",
        &service_bin("logger"),
        &[
            lookupd_http.clone(),
            flag("lookupd-poll-interval", "250ms"),
            flag("output", output.display()),
            local_http(4192),
        ],
    );
    let mut worker = hosts.run(
        &app,
        "worker",
        &service_bin("worker"),
        &[
            lookupd_http.clone(),
            flag("lookupd-poll-interval", "250ms"),
            flag("destination-nsqd-tcp-address", &nsqd_tcp),
            flag("worker-id", "netns-worker"),
            local_http(4191),
        ],
    );
    let mut sensor = hosts.run(
        &app,
        "sensor",
        &service_bin("sensor"),
        &[
            flag("nsqd-tcp-address", &nsqd_tcp),
            flag("sensor-id", "netns"),
            flag("count", 2_000),
            flag("rate", 1_000),
            local_http(4190),
        ],
    );
    let status = sensor.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "sensor: {status}\n{}",
        sensor.logs().join("\n")
    );
    wait_until(
        "2,000 results logged across the link",
        Duration::from_secs(60),
        || {
            let n = count_lines(&output);
            async move { n >= 2_000 }
        },
    )
    .await;
    let lines = read_jsonl(&output);
    assert_eq!(lines.len(), 2_000);
    let mut seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=2_000).collect::<Vec<_>>());
    // The consumers reached nsqd at its broadcast address, as lookupd gave it.
    let addr = format!("{nsq_ip}:4150");
    assert!(
        worker.wait_logged(&[&addr]).await && logger.wait_logged(&[&addr]).await,
        "worker and logger connected to {addr} found through lookupd"
    );
    println!("netns: 2,000 readings across a veth, nsqd found at its broadcast address {addr}");
    for s in [&mut worker, &mut logger] {
        let status = s.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{}: {status}", s.name);
    }
}
