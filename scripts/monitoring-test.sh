#!/usr/bin/env bash
# The alerts and the dashboard against the real thing: Debian's Prometheus
# scrapes a running stack (librdkafka's mock cluster, a router, a gateway
# with a mutual-TLS listener, loadgen's cars publishing and receiving
# downlink messages with receipts), and every alert expression and every
# dashboard expression is evaluated through its HTTP API and must return
# series. scripts/check-k8s.sh checks the same files offline (promtool,
# metric names in the source); this catches what only a live target
# shows: a label the binaries do not set, a label value they never use,
# two operands whose label sets never match, a job or target label the
# rules or the dashboard's variables expect and a scrape does not give.
#
#   scripts/monitoring-test.sh     # about 40 s
#
# Prometheus (the binary, not the service) runs with a generated
# configuration: jobs carbridge-gateway and carbridge-router named and
# labelled as the monitoring component's PodMonitors name and label them
# (namespace, pod, container, endpoint), scraped and evaluated every
# second, deploy/monitoring/carbridge-rules.yml loaded, storage in the
# run's directory, on a free port. Once the cars are done and each target
# has been scraped 5 times, scripts/py/monitoring_test.py checks:
#   - /api/v1/targets: both jobs' targets up;
#   - /api/v1/rules: every group of the rules file loaded, every rule
#     evaluated with health ok and no error;
#   - /api/v1/query: every alert expression, with `bool` after each
#     comparison (`> 0` becomes `> bool 0`, so a quiet alert returns its
#     candidates as 0 instead of nothing) and without `offset` (a short
#     run has nothing an hour old), returns series; so does every
#     dashboard expression, with $namespace and $instance set to what the
#     dashboard's variable queries return here and $__rate_interval to 1m;
#     every selector in them matches series; and the series carry the
#     labels the alerts' annotations and the panels' legends print. Each
#     failure names the expression, its metrics, and for an empty selector
#     what the metric does carry. Notes list alerts whose condition held
#     during the run (a false alarm on a healthy stack) and panels with
#     nothing but NaN.
# The cars connect after Prometheus has scraped the counters at rest, so
# rate() sees the connects, handshakes and registry records too.
#
# Exit 0 when all hold, 1 otherwise (2: a usage error; 130: interrupted).
# Environment:
#   MONITORING_PROFILE  release (default) or dev: the cargo profile
#                       whose binaries run, built first as scripts/stack.sh
#                       builds them (nothing to do after it ran with the
#                       same profile)
#   MONITORING_BIN      a directory holding gateway, router, loadgen,
#                       carbridge-mockbroker and carbridge-testpki to run
#                       instead, without building
#   MONITORING_DIR      logs, the configuration and Prometheus' data
#                       (default: a temporary directory, removed after a
#                       pass; a directory given here is kept)
#   MONITORING_CARS     cars (default 200), publishing every second;
#                       20 downlink messages a second with receipts
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

profile=${MONITORING_PROFILE:-release}
case "$profile" in
  release) bin=target/release; build=(cargo build --locked --release) ;;
  dev) bin=target/debug; build=(cargo build --locked) ;;
  *) echo "MONITORING_PROFILE must be release or dev" >&2; exit 2 ;;
esac
cars=${MONITORING_CARS:-200}
rules=deploy/monitoring/carbridge-rules.yml
dashboard=deploy/monitoring/carbridge-dashboard.json
interval=1 shards=2 warmup=3 duration=15
started=$(date +%s.%N)

# Debian's Prometheus (its service is not used) and PyYAML, as
# scripts/setup.sh installs them, when missing.
apt_missing=()
command -v prometheus >/dev/null || apt_missing+=(prometheus)
python3 -c 'import yaml' 2>/dev/null || apt_missing+=(python3-yaml)
if ((${#apt_missing[@]})); then
  log "installing ${apt_missing[*]} (apt)"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# Binaries from this source: a stale one (or one another checkout built
# into a shared target/) would be judged instead of the rules. The same
# build as scripts/stack.sh's (the same packages, so the same features):
# after it, nothing to do.
if [ -n "${MONITORING_BIN:-}" ]; then
  bin=$MONITORING_BIN
else
  log "building ($profile)"
  "${build[@]}" --workspace --bins --example kafka_rtt 2>&1 | tail -n 3 >&2
fi
for b in gateway router loadgen carbridge-mockbroker carbridge-testpki; do
  [ -x "$bin/$b" ] || { echo "$bin/$b not found" >&2; exit 1; }
done

keep_dir=${MONITORING_DIR:-}
dir=${MONITORING_DIR:-$(mktemp -d)}
mkdir -p "$dir"
# shellcheck disable=SC2317 # called by cleanup (scripts/lib.sh)
stop_all() {
  [ ${#pids[@]} -eq 0 ] || stop_pids "${pids[@]}"
  [ ! -d "$dir" ] || log "logs, prometheus.yml and Prometheus' data in $dir"
}
cleanup_on_exit ""
# shellcheck disable=SC2317 # called by await
ready() { curl -fsS "http://$1/readyz"; }
# shellcheck disable=SC2317 # called by await
prometheus_ready() { curl -fsS "http://127.0.0.1:$prometheus_port/-/ready"; }

mapfile -t ports < <(py monitoring_test free-ports 4)
prometheus_port=${ports[0]} mqtt_port=${ports[1]}
gateway_admin=127.0.0.1:${ports[2]} router_admin=127.0.0.1:${ports[3]}

log "librdkafka mock cluster ($((shards * 2)) partitions, $shards slots)"
"$bin/carbridge-mockbroker" --partitions $((shards * 2)) --slots "$shards" \
  --bootstrap-file "$dir/bootstrap" >"$dir/mockbroker.log" 2>&1 &
pids+=($!)
await "the mock cluster" test -s "$dir/bootstrap"
kafka=$(cat "$dir/bootstrap")

log "router (admin $router_admin)"
"$bin/router" --kafka-bootstrap "$kafka" -X fetch.wait.max.ms=2 --admin-listen "$router_admin" \
  >"$dir/router.log" 2>&1 &
pids+=($!)

# Mutual TLS, as scripts/stack.sh's STACK_TLS: the TLS panels and the
# certificate-expiry alert need a TLS listener (its server and CA expiry).
pki=$dir/pki
"$bin/carbridge-testpki" "$pki" >"$dir/testpki.log" 2>&1 || { cat "$dir/testpki.log" >&2; exit 1; }
tls_gateway_toml "127.0.0.1:$mqtt_port" "$pki" >"$dir/gateway.toml"
log "gateway on 127.0.0.1:$mqtt_port (mutual TLS, $shards shards, admin $gateway_admin)"
"$bin/gateway" --config "$dir/gateway.toml" --kafka-bootstrap "$kafka" -X fetch.wait.max.ms=2 \
  --shards "$shards" --bridge-id 0 --admin-listen "$gateway_admin" >"$dir/gateway.log" 2>&1 &
pids+=($!)
await "the router" ready "$router_admin"
await "the gateway" ready "$gateway_admin"

py monitoring_test config "$dir/prometheus.yml" --rules "$(pwd)/$rules" --interval "$interval" \
  --gateway "$gateway_admin" --router "$router_admin" --namespace carbridge-monitoring-test
log "prometheus $(prometheus --version 2>&1 | awk 'NR == 1 {print $3}') on 127.0.0.1:$prometheus_port"
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus" \
  --web.listen-address="127.0.0.1:$prometheus_port" --storage.tsdb.retention.time=1h \
  >"$dir/prometheus.log" 2>&1 &
pids+=($!)
await "Prometheus" prometheus_ready
# Counters seen at rest first: rate() then shows the cars' connects.
await "Prometheus to scrape both targets twice" py monitoring_test scraped "http://127.0.0.1:$prometheus_port" 2

log "loadgen: $cars cars over TLS, a PUBLISH a second each, 20 downlink messages a second with receipts"
# In the background: a signal to this script is handled at once, not
# when loadgen ends.
timeout $((warmup + duration + 60)) "$bin/loadgen" --kafka-bootstrap "$kafka" --target "127.0.0.1:$mqtt_port" \
  --tls --tls-dir "$pki" --cars "$cars" --publish-interval-ms 1000 --downlink-rate 20 --receipts \
  --warmup-secs "$warmup" --duration-secs "$duration" --quiet \
  --report-json "$dir/loadgen.json" --report-html "$dir/loadgen.html" >"$dir/loadgen.log" 2>&1 &
pids+=($!)
wait "${pids[-1]}" || { tail -n 20 "$dir/loadgen.log" >&2; log "loadgen failed"; exit 1; }

log "evaluating the alerts and the dashboard through Prometheus' API"
py monitoring_test check "http://127.0.0.1:$prometheus_port" --rules "$rules" --dashboard "$dashboard" \
  --interval "$interval" --scrapes 5 --wait 60

stop_pids "${pids[@]}"
pids=()
[ -n "$keep_dir" ] || rm -rf "$dir"
secs=$(awk -v from="$started" -v to="$(date +%s.%N)" 'BEGIN { printf "%.0f", to - from }')
log "passed in $secs s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
