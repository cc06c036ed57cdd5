//! Child processes for the benchmark: the suite's binaries and NSQ's Go tools.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the suite's release binaries are: beside this benchmark's own executable.
pub fn suite_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the benchmark's own path")?;
    let dir = exe
        .parent()
        .context("the benchmark executable has no parent folder")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the services first (`cargo build --release --bins`, as scripts/bench.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// A running child, SIGKILLed on drop.
pub struct Proc {
    /// For messages.
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    /// Starts `path` with `args`; its output goes to `log` (a file) so it never blocks.
    pub fn spawn(name: &str, path: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(path)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        self.status_kb("VmHWM")
    }

    /// Resident set size now (VmRSS), in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        self.status_kb("VmRSS")
    }

    /// A `kB` field of `/proc/<pid>/status`, in bytes.
    fn status_kb(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .with_context(|| format!("{} is not running", self.name))?;
        let line = status
            .lines()
            .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("malformed {field} line: {line}"))?
            .parse()?;
        Ok(kb * 1024)
    }

    /// True while it has not exited (without reaping it).
    pub fn running(&self) -> bool {
        // WNOHANG-style check through /proc: a zombie or a missing entry means it ended.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map(|s| {
                !s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// Waits for the exit, up to `timeout`; an error if it failed or did not end.
    pub async fn wait_success(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("process already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!("{} exited with {status}", self.name);
            }
            if Instant::now() > deadline {
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait (a clean stop).
    pub async fn terminate(&mut self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let _ = self.wait_success(Duration::from_secs(20)).await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs one of NSQ's Go bench tools to the end and returns the `ops/s` it printed.
pub async fn go_bench(name: &str, args: Vec<String>) -> anyhow::Result<f64> {
    let path = nsq::testkit::bin(name);
    let out = tokio::process::Command::new(&path)
        .args(&args)
        .output()
        .await
        .with_context(|| format!("cannot run {}", path.display()))?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // "... duration: 5s - 67.032mb/s - 351424.543ops/s - 2.846us/op"
    text.split(" - ")
        .find_map(|part| part.trim().strip_suffix("ops/s").map(str::parse::<f64>))
        .transpose()?
        .with_context(|| format!("{name} printed no ops/s figure: {text}"))
}

/// A number that differs between calls (milliseconds since the Unix epoch, made unique), so
/// that a process started again gets a log file of its own.
pub fn stamp() -> u128 {
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *last = now.max(*last + 1);
    *last
}

/// Counts complete lines of a file (0 when missing).
pub fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Polls until `path` has at least `n` lines, or fails after `timeout`.
pub async fn wait_lines(path: &Path, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = count_lines(path);
        if have >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} has {have} of {n} lines after {timeout:?}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time (user + system) of process `pid` so far, in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, so 11 and 12 after the ')'.
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .context("short /proc/<pid>/stat")
        .and_then(|(u, s)| Ok(u.parse::<u64>()? + s.parse::<u64>()?))?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Ok(ticks as f64 / hz)
}
