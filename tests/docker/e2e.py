#!/usr/bin/env python3
"""The README's "With Docker" section, run for real against a Docker engine.

Run by scripts/docker-e2e.sh, which provides the engine, `docker compose` v2 and the base images;
run from the repository's root. Every `docker compose …` or `curl …` command this test runs as
the user would is looked up in the README's "With Docker" section first: a command the README
does not print fails the test, and a README command that fails is a failing test. What the test
reads to check the outcome (`docker compose ps`, HTTP GETs, `docker image inspect`) is its own.

Standard library only. Exit status 0 when every check held; a failed check raises, with what
was expected and what was seen.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTED = time.monotonic()

# Containers the default `docker compose up` starts, and the images built from the Dockerfile.
SERVICES = ["nsqlookupd", "nsqd", "nsqadmin", "sensor", "worker", "logger"]
IMAGES = {"sensor": 4190, "worker": 4191, "logger": 4192}
# Every profile of the compose file: `ps`, `logs` and the clean-up see their containers too.
EVERY_PROFILE = ["--profile", "archive", "--profile", "consul"]
# What Docker labels the project's containers and volumes with (the project is the folder).
PROJECT_LABEL = f"label=com.docker.compose.project={ROOT.name}"
# What the README states about the images ("The images").
IMAGE_USER = "65532:65532"
# Bound on each image's size, stated in the README: the images built here (glibc stand-in bases,
# docker/standins) measured 11.5 to 12.9 MB.
IMAGE_MAX_BYTES = 16 * 1000 * 1000


def log(msg: str) -> None:
    print(f"[docker-e2e {time.monotonic() - STARTED:6.1f}s] {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


# --- the README's commands -------------------------------------------------------------------


def readme_commands() -> set[str]:
    """Every command line in the ```sh blocks of the README's "With Docker" section (`\\`
    continuations joined, trailing `# comments` removed, whitespace normalised)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## With Docker\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    commands = set()
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.add(" ".join(shlex.split(line)))
    return commands


README = readme_commands()


def in_readme(cmd: str) -> None:
    """Fails unless the README's "With Docker" section prints `cmd`."""
    if " ".join(shlex.split(cmd)) not in README:
        raise Failed(f"the test runs {cmd!r}, which README.md's 'With Docker' section does not print")


def readme(cmd: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `cmd` as printed in the README (it must be there), in the repository's root."""
    in_readme(cmd)
    log(f"$ {cmd}")
    try:
        done = subprocess.run(
            ["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise Failed(f"README command {cmd!r} did not finish within {timeout} s") from e
    if check and done.returncode != 0:
        raise Failed(
            f"README command {cmd!r} failed with exit status {done.returncode}:\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    # nsqd's HTTP API answers an error as {"message": ...}, which curl without -f exits 0 on.
    if check and cmd.startswith("curl") and '"message"' in done.stdout:
        raise Failed(f"README command {cmd!r}: nsqd answered {done.stdout.strip()!r}")
    return done


def readme_for(cmd: str, seconds: float, until=None) -> str:
    """Runs a README command that does not end by itself (`logs -f`, `nsq_tail`) until what it
    printed satisfies `until` (or for `seconds` when there is no `until`), then stops it and
    returns what it printed. With `until`, not seeing it within `seconds` fails the test."""
    in_readme(cmd)
    log(f"$ {cmd}   (reading its output, {seconds:.0f} s at most)")
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + seconds
        seen = ""
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.25)
            out.seek(0)
            seen = out.read()
            if until is not None and until(seen):
                break
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        out.seek(0)
        seen = out.read()
    if until is not None and not until(seen):
        raise Failed(f"{cmd!r} did not print what was expected within {seconds} s:\n{seen[-3000:]}")
    return seen


# --- observing -------------------------------------------------------------------------------


def own(args: list[str], timeout: float = 60) -> str:
    """A command of the test's own (not a README step); its failure fails the test."""
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise Failed(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def http(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def get_json(url: str):
    status, body = http(url)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


class Pending:
    """What a check saw when it is not done yet (shown if the wait times out)."""

    def __init__(self, seen):
        self.seen = seen

    def __repr__(self) -> str:
        return repr(self.seen)


def wait_until(what: str, timeout: float, check):
    """Polls `check()` every 0.5 s until it returns a truthy value other than `Pending`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
        except Failed:
            raise
        except Exception as e:  # a transient error while containers start: keep polling
            last = e
        if last and not isinstance(last, (Exception, Pending)):
            return last
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}")
        time.sleep(0.5)


def ps() -> dict[str, list[dict]]:
    rows = [json.loads(l) for l in own(["docker", "compose", *EVERY_PROFILE, "ps", "--format", "json"]).splitlines() if l.strip()]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["Service"], []).append(r)
    return by


def all_healthy(expect: dict[str, int]) -> dict | None:
    """`docker compose ps`: exactly `expect[service]` running, healthy containers per service."""
    seen = ps()
    for service, n in expect.items():
        rows = seen.get(service, [])
        if len(rows) != n or any(r["State"] != "running" or r.get("Health") != "healthy" for r in rows):
            return None
    return {s: [r.get("Health") for r in rows] for s, rows in seen.items()}


def channel_stats(topic: str, channel: str) -> dict | None:
    """The channel's entry in nsqd's /stats (on the host port), or None while there is none."""
    stats = get_json(f"http://127.0.0.1:4151/stats?format=json&topic={topic}")
    for t in (stats or {}).get("topics", []):
        if t["topic_name"] == topic:
            for c in t.get("channels", []):
                if c["channel_name"] == channel:
                    return c
    return None


def channel_clients(topic: str, channel: str) -> int | None:
    c = channel_stats(topic, channel)
    return None if c is None else len(c.get("clients", []))


def workers_view(port: int = 4192):
    return get_json(f"http://127.0.0.1:{port}/workers")


def results_file() -> list[dict]:
    """The README's own command copies the results off the volume."""
    out = ROOT / "results.jsonl"
    out.unlink(missing_ok=True)
    readme("docker compose cp logger:/data/results.jsonl ./results.jsonl")
    lines = []
    for n, line in enumerate(out.read_text().splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise Failed(f"results.jsonl line {n} is not JSON ({e}): {line[:200]!r}") from e
    out.unlink()
    return lines


def duplicates_and_holes(lines: list[dict]) -> tuple[list[tuple], list[str]]:
    """The (sensor, epoch, seq) logged more than once, and the holes: each epoch's seqs must be
    1..max."""
    keys = Counter((r["sensor_id"], r["epoch"], r["seq"]) for r in lines)
    dups = [k for k, n in keys.items() if n > 1]
    epochs: dict[tuple, set] = {}
    for sensor, epoch, seq in keys:
        epochs.setdefault((sensor, epoch), set()).add(seq)
    holes = []
    for (sensor, epoch), seqs in epochs.items():
        missing = set(range(1, max(seqs) + 1)) - seqs
        if missing:
            holes.append(f"{sensor} epoch {epoch}: {len(missing)} of 1..{max(seqs)} missing, e.g. {sorted(missing)[:5]}")
    return dups, holes


def complete_and_unique(what: str, at_least: int, timeout: float = 90, also=None) -> list[dict]:
    """Waits until the results file holds at least `at_least` results, complete and unique,
    and `also(lines)` (if given) finds nothing missing (it returns what is, else None).
    Replay fills holes after a crash within seconds (the logger asks at its gap timeout), so
    holes are waited out; a duplicate is final (the file is append-only), so it fails at once."""
    def check():
        lines = results_file()
        dups, holes = duplicates_and_holes(lines)
        if dups:
            raise Failed(f"{what}: {len(dups)} readings logged more than once, e.g. {dups[:3]}")
        missing = also(lines) if also else None
        if len(lines) >= at_least and not holes and not missing:
            return lines
        return Pending(f"{len(lines)} results; {holes[:3]}; {missing or ''}")

    lines = wait_until(f"{what}: >= {at_least} results, complete and unique", timeout, check)
    log(f"{what}: {len(lines)} results, complete and unique")
    return lines


# --- the journey -----------------------------------------------------------------------------


def images() -> None:
    for name, port in IMAGES.items():
        info = json.loads(own(["docker", "image", "inspect", f"nsq-suite/{name}"]))[0]
        cfg = info["Config"]
        size = info["Size"]
        log(f"image nsq-suite/{name}: {size / 1e6:.1f} MB, user {cfg.get('User')}, "
            f"entrypoint {cfg.get('Entrypoint')}, healthcheck {cfg.get('Healthcheck', {}).get('Test')}")
        binary = f"/usr/local/bin/{name}"
        expect = {
            "User": IMAGE_USER,
            "Entrypoint": [binary],
            "Healthcheck": ["CMD", binary, "healthcheck"],
        }
        got = {"User": cfg.get("User"), "Entrypoint": cfg.get("Entrypoint"),
               "Healthcheck": (cfg.get("Healthcheck") or {}).get("Test")}
        if got != expect:
            raise Failed(f"nsq-suite/{name}: expected {expect}, got {got}")
        if f"{port}/tcp" not in (cfg.get("ExposedPorts") or {}):
            raise Failed(f"nsq-suite/{name} does not expose {port}: {cfg.get('ExposedPorts')}")
        if size > IMAGE_MAX_BYTES:
            raise Failed(f"nsq-suite/{name} is {size} bytes, over the README's bound {IMAGE_MAX_BYTES}")
        # No shell in the image (README: "no shell, so copy the file out").
        sh = subprocess.run(["docker", "run", "--rm", "--entrypoint", "/bin/sh", f"nsq-suite/{name}", "-c", "true"],
                            capture_output=True, text=True, timeout=60)
        if sh.returncode == 0:
            raise Failed(f"nsq-suite/{name} has a /bin/sh")


def main() -> None:
    readme("docker compose build", timeout=1800)
    log("built the three images")
    images()

    readme("docker compose up -d", timeout=300)
    health = wait_until("the 6 containers healthy", 180, lambda: all_healthy({s: 1 for s in SERVICES}))
    log(f"healthy: {health}")
    complete_and_unique("first results", at_least=20)

    # --- scaling: three workers share the channel `worker` ---
    readme("docker compose up -d --scale worker=3", timeout=300)
    wait_until("3 healthy workers", 180, lambda: all_healthy({**{s: 1 for s in SERVICES}, "worker": 3}))
    wait_until("3 clients on channel worker in nsqd's /stats", 60, lambda: channel_clients("sensor_data", "worker") == 3)

    # A 5 s window at 10 readings/s holds ~50 results; NSQ gives each message to one of the
    # ready clients, so each share is about binomial(50, 1/3): 33 % +- 7 %. A window with each
    # share within 15..55 % (more than 2.5 standard deviations) comes within a few windows.
    def even_shares():
        view = workers_view()
        if not view or len(view.get("workers", [])) != 3:
            return None
        shares = [w["share"] for w in view["workers"]]
        return shares if all(0.15 <= s <= 0.55 for s in shares) else None

    shares = wait_until("/workers: 3 workers, each near a third", 90, even_shares)
    log(f"/workers shares: {[round(s * 100) for s in shares]} %")
    # The summary is logged every 5 s, and /workers already counts 3.
    readme_for("docker compose logs -f logger", 30, until=lambda out: re.search(r"\b3 workers\b", out))
    port = readme("docker compose port --index=2 worker 4191").stdout.strip().rsplit(":", 1)[-1]
    status, body = http(f"http://127.0.0.1:{port}/health")
    if status != 200 or '"worker"' not in body:
        raise Failed(f"replica 2's /health on host port {port}: {status} {body!r}")

    # nsqadmin lists the topics.
    topics = wait_until("nsqadmin's topics", 30, lambda: get_json("http://127.0.0.1:4171/api/topics"))
    for t in ["sensor_data", "results"]:
        if t not in topics.get("topics", []):
            raise Failed(f"nsqadmin on 4171 does not list {t}: {topics}")
    status, _ = http("http://127.0.0.1:4171/")
    if status != 200:
        raise Failed(f"nsqadmin's page answered {status}")

    lines = complete_and_unique("with 3 workers", at_least=1)
    workers = {r["worker_id"] for r in lines}
    if len(workers) < 3:
        raise Failed(f"results from {len(workers)} workers, expected 3 or more: {workers}")

    # --- scaling down ---
    readme("docker compose up -d --scale worker=1", timeout=300)
    wait_until("1 client on channel worker", 60, lambda: channel_clients("sensor_data", "worker") == 1)
    wait_until("/workers: 1 worker", 60, lambda: (v := workers_view()) and len(v["workers"]) == 1)

    # --- fan-out: the archive profile ---
    readme("docker compose --profile archive up -d", timeout=300)
    archived = wait_until("results on the archive's channel", 90,
                          lambda: (v := workers_view(4193)) and v.get("count", 0) > 0 and v)
    log(f"archive: {archived['count']} results in its window")

    # --- nsqd crashes and comes back; lost readings are replayed ---
    before = len(results_file())
    readme("docker compose kill nsqd")
    readme("docker compose start nsqd")
    wait_until("nsqd healthy again", 120, lambda: all_healthy({"nsqd": 1, "logger": 1, "sensor": 1, "worker": 1}))
    complete_and_unique("after nsqd was killed and started", at_least=before + 50, timeout=120)

    # --- down, then up: the volumes keep the results, the logger keeps writing ---
    before = results_file()
    readme("docker compose --profile archive down", timeout=300)
    nothing_left("docker compose --profile archive down")
    readme("docker compose up -d", timeout=300)
    wait_until("healthy again after down/up", 180, lambda: all_healthy({s: 1 for s in SERVICES}))
    after = complete_and_unique("after down and up", at_least=len(before) + 30)
    if after[: len(before)] != before:
        raise Failed("the results written before `down` changed after `up`")
    new_epochs = {(r["sensor_id"], r["epoch"]) for r in after[len(before):]} - {(r["sensor_id"], r["epoch"]) for r in before}
    log(f"after down/up: {len(after) - len(before)} new results, new sensor epochs {sorted(new_epochs)}")

    # --- the dead-letter recipe ---
    readme("curl -X POST 'http://localhost:4151/topic/create?topic=sensor_data.dead'")
    readme("curl -X POST 'http://localhost:4151/channel/create?topic=sensor_data.dead&channel=inspect'")
    readme("curl -d 'not a reading' 'http://localhost:4151/pub?topic=sensor_data'")
    wait_until("the dead letter on channel inspect", 60,
               lambda: (c := channel_stats("sensor_data.dead", "inspect")) and c["depth"] + c["in_flight_count"] >= 1)
    # The dead letter carries the original body, which is text here, and its reason.
    readme_for(
        "docker compose exec nsqd nsq_tail --lookupd-http-address=nsqlookupd:4161 "
        "--topic=sensor_data.dead --channel=inspect", 60,
        until=lambda out: "not a reading" in out)
    log("nsq_tail printed the dead letter")

    # --- configuration ---
    helptext = readme("docker compose run --rm --no-deps worker --help").stdout
    if "WORKER_LOOKUPD_HTTP_ADDRESS" not in helptext:
        raise Failed(f"worker --help does not list its variables:\n{helptext[:2000]}")
    printed = readme("docker compose run --rm --no-deps worker --print-config").stdout
    if "nsqlookupd:4161" not in printed:
        raise Failed(f"worker --print-config does not show the compose environment:\n{printed[:2000]}")

    readme("docker compose down", timeout=300)
    nothing_left("docker compose down")

    # --- service discovery: the consul profile ---
    readme("docker compose --profile consul up -d", timeout=300)
    wait_until("Consul and worker-consul healthy", 180,
               lambda: all_healthy({**{s: 1 for s in SERVICES}, "consul": 1, "worker-consul": 1}))

    consul_worker = next(r["Name"] for r in ps()["worker-consul"])
    host = own(["docker", "inspect", "-f", "{{.Config.Hostname}}", consul_worker]).strip()

    # Only worker-consul is given Consul's address; it registers as `worker-<host>-<pid>-<port>`.
    def registered():
        passing = get_json("http://127.0.0.1:8500/v1/health/service/worker?passing")
        ids = [e["Service"]["ID"] for e in passing or []]
        return ids if any(host in i for i in ids) else Pending(ids)

    ids = wait_until("worker-consul passing in Consul", 90, registered)
    for name in ["nsqlookupd", "nsqd", "nsqadmin"]:
        if not get_json(f"http://127.0.0.1:8500/v1/health/service/{name}?passing"):
            raise Failed(f"Consul lists no passing {name}")
    status, body = http("http://127.0.0.1:4194/ready")
    if status != 200:
        raise Failed(f"worker-consul's /ready: {status} {body}")

    def none_from_consul_worker(lines):
        return None if any(r["worker_id"].startswith(host) for r in lines) else f"no result from {host}"

    complete_and_unique("with the consul profile", at_least=1, also=none_from_consul_worker)
    log(f"consul profile: workers passing in Consul {ids}; worker-consul ({host}) logged results")
    readme("docker compose --profile consul down", timeout=300)
    nothing_left("docker compose --profile consul down")

    readme("docker compose --profile archive down -v", timeout=300)
    volumes = own(["docker", "volume", "ls", "-q", "--filter", PROJECT_LABEL]).split()
    if volumes:
        raise Failed(f"`down -v` left volumes: {volumes}")
    log(f"passed in {time.monotonic() - STARTED:.0f} s")


def nothing_left(after: str) -> None:
    left = own(["docker", "ps", "-aq", "--filter", PROJECT_LABEL]).split()
    if left:
        raise Failed(f"`{after}` left {len(left)} containers of the project")


if __name__ == "__main__":
    os.chdir(ROOT)
    try:
        main()
    except Exception as e:  # a failed check, or the test's own error: both fail the run
        log(f"FAILED: {type(e).__name__}: {e}")
        # What the containers were doing, for the reader of a failed CI run.
        for args in (["docker", "compose", *EVERY_PROFILE, "ps", "-a"],
                     ["docker", "compose", *EVERY_PROFILE, "logs", "--tail", "30", "--no-color"]):
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
            print(done.stdout[-20000:], done.stderr[-2000:], file=sys.stderr)
        sys.exit(1)
