#!/usr/bin/env bash
# Runs the whole suite as local processes: nsqlookupd, nsqd, nsqadmin, the logger, N workers
# and a sensor, from the Procfile, with honcho. Builds what is missing first. Ctrl-C stops all.
#
#   scripts/run.sh [--workers N] [--rate R] [--work-ms MS] [--consul]
#
# Defaults: 3 workers, 10 readings/s, no simulated work. nsqadmin: http://127.0.0.1:4171
# --consul: also a Consul dev agent (UI http://127.0.0.1:8500) with NSQ's daemons registered
# from consul/local; the services register themselves there and find nsqlookupd and nsqd there.
set -euo pipefail
cd "$(dirname "$0")/.."

workers=3 rate=10 work_ms=0 consul=0
usage() { sed -n 2,9p "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=${2:?--workers needs a number}; shift 2 ;;
    --workers=*) workers=${1#*=}; shift ;;
    --rate) rate=${2:?--rate needs a number}; shift 2 ;;
    --rate=*) rate=${1#*=}; shift ;;
    --work-ms) work_ms=${2:?--work-ms needs a number}; shift 2 ;;
    --work-ms=*) work_ms=${1#*=}; shift ;;
    --consul) consul=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in "$workers" "$rate" "$work_ms"; do
  case "$v" in ''|*[!0-9]*) echo "run.sh: '$v' is not a whole number" >&2; exit 2 ;; esac
done

scripts/build-nsq.sh
if [ "$consul" = 1 ]; then scripts/build-consul.sh; fi
cargo build --release --bins --locked -p sensor -p worker -p logger
python=$(scripts/python-env.sh)
venv_bin=$(dirname "$python")
if ! cmp -s scripts/run-requirements.txt .venv/.run-requirements 2>/dev/null; then
  "$venv_bin/pip" install --quiet --disable-pip-version-check -r scripts/run-requirements.txt
  cp scripts/run-requirements.txt .venv/.run-requirements
fi
mkdir -p .run/nsqd

processes=(nsqlookupd nsqd nsqadmin logger worker sensor)
consul_line=
if [ "$consul" = 1 ]; then
  processes+=(consul)
  # Read by the services like every setting (flags > environment > file): they register
  # themselves with a check on /ready and add what Consul lists to their fixed addresses.
  export SENSOR_CONSUL_HTTP_ADDRESS=127.0.0.1:8500 WORKER_CONSUL_HTTP_ADDRESS=127.0.0.1:8500 \
    LOGGER_CONSUL_HTTP_ADDRESS=127.0.0.1:8500
  consul_line="
  consul UI: http://127.0.0.1:8500/ui   (every service and its health)"
fi

cat <<MSG
nsq-suite: nsqlookupd, nsqd, nsqadmin, logger, $workers worker(s), sensor at $rate readings/s
  nsqadmin:  http://127.0.0.1:4171   (topic sensor_data, channel worker: one client per worker)
  results:   .run/results.jsonl
  health:    sensor http://127.0.0.1:4190/health, logger http://127.0.0.1:4192/health$consul_line
  Ctrl-C stops everything.
MSG
export RATE=$rate WORK_MS=$work_ms
exec "$venv_bin/honcho" start -f Procfile -c "worker=$workers" "${processes[@]}"
