#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests in deploy/k8s and of the
# monitoring files in deploy/monitoring, one line per check; stops at the
# first failure (exit 1).
#
#   scripts/check-k8s.sh
#
# Before the overlays:
#   - yamllint --strict (deploy/k8s/.yamllint) on deploy/k8s and
#     deploy/monitoring;
#   - the seccomp profile, also compiled with the machine's libseccomp when
#     it has one (deploy/checks/seccomp.py);
#   - the derived files match their sources (python3 deploy/generated.py
#     --check: the PrometheusRule, the dashboard's copy, the SeccompProfile);
#   - the alerts: promtool check rules, promtool test rules, and
#     deploy/monitoring/check.py (metric names exported, every alert tested
#     firing and quiet, the dashboard's expressions parsed by promtool).
# For every overlay (deploy/k8s/overlays/*):
#   - `kubectl kustomize` renders it; an overlay that needs the operator's
#     values (production-nlb: trusted networks) must refuse to render
#     without them, and is then rendered with test values;
#   - custom resources (PodMonitor, PrometheusRule, Certificate,
#     SeccompProfile) are checked against their CRDs' schemas
#     (deploy/checks/crds.mjs, Node.js);
#   - kubernetes-validate --strict accepts every other object for
#     Kubernetes 1.30 and 1.33 (a kind it has no schema for fails too);
#   - the rendered gateway.toml parses with `gateway check-config`, when a
#     gateway binary is at hand (GATEWAY_BIN, target/release, target/debug);
#   - policy checks on the rendered objects (deploy/checks/policy.py).
#
# Installs what it lacks: kubernetes-validate (pip), yamllint, PyYAML and
# promtool (Debian's prometheus package) with apt, the CRD models and
# js-yaml (npm, pinned, into ~/.cache/carbridge). kubectl and Node.js 20+
# must be there already.
set -euo pipefail
cd "$(dirname "$0")/.."

k8s=${K8S_DIR:-deploy/k8s}  # K8S_DIR: check another copy of the tree
versions=(1.30 1.33)
profile=$k8s/components/seccomp-io-uring/io-uring.json

ok() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*" >&2; exit 1; }
note() { printf 'note  %s\n' "$*"; }

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo_cmd apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Tools --------------------------------------------------------------------
command -v kubectl >/dev/null || fail "kubectl not found: it renders the overlays (kubectl kustomize)"
ok "tool kubectl ($(kubectl version --client 2>/dev/null | awk '/Kustomize/ {print "kustomize " $3}'))"

if ! command -v yamllint >/dev/null; then
  note "installing yamllint (apt)"
  apt_install yamllint || fail "could not install yamllint"
fi
ok "tool yamllint ($(yamllint --version | awk '{print $2}'))"

# Python with PyYAML for the policy checks; kubernetes-validate is called as
# a module of the same interpreter, so PATH does not matter.
py=python3
if ! "$py" -c 'import kubernetes_validate' 2>/dev/null; then
  note "installing kubernetes-validate (pip)"
  "$py" -m pip install --quiet kubernetes-validate 2>/dev/null ||
    "$py" -m pip install --quiet --user --break-system-packages kubernetes-validate ||
    fail "could not install kubernetes-validate"
fi
if ! "$py" -c 'import yaml' 2>/dev/null; then
  note "installing PyYAML (apt python3-yaml)"
  apt_install python3-yaml || true
  "$py" -c 'import yaml' 2>/dev/null || "$py" -m pip install --quiet pyyaml ||
    fail "no PyYAML for $py"
fi
ok "tool kubernetes-validate ($("$py" -m kubernetes_validate --version 2>&1)), PyYAML"

if ! command -v promtool >/dev/null; then
  note "installing promtool (apt prometheus)"
  apt_install prometheus || fail "could not install prometheus (for promtool)"
fi
ok "tool promtool ($(promtool --version 2>&1 | awk 'NR == 1 {print $3}'))"

# The CRD schemas come as npm packages; Node.js 20 runs them (they ask
# for 22 and work on 20, with a warning from npm only).
command -v node >/dev/null || fail "node not found: Node.js 20+ validates the custom resources"
node_pkgs="@kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/cert-manager@6.0.0 js-yaml@4.1.0"
node_dir=${XDG_CACHE_HOME:-$HOME/.cache}/carbridge/check-k8s-node
if [ "$(cat "$node_dir/.installed" 2>/dev/null)" != "$node_pkgs" ]; then
  note "installing $node_pkgs (npm) into $node_dir"
  rm -rf "$node_dir" && mkdir -p "$node_dir"
  echo '{"private": true}' >"$node_dir/package.json"
  # shellcheck disable=SC2086 # one word per package
  (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error $node_pkgs >/dev/null) ||
    fail "could not install $node_pkgs"
  echo "$node_pkgs" >"$node_dir/.installed"
fi
cp deploy/checks/crds.mjs "$node_dir/crds.mjs"
ok "tool node $(node --version), $node_pkgs"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- Sources ------------------------------------------------------------------
yamllint --strict -c "$k8s/.yamllint" "$k8s" deploy/monitoring ||
  fail "yamllint --strict $k8s deploy/monitoring"
ok "yamllint --strict $k8s deploy/monitoring"

seccomp_check=deploy/checks/seccomp.py
"$py" "$seccomp_check" "$profile" || exit 1

python3 deploy/generated.py --check || exit 1
ok "derived files match their sources (python3 deploy/generated.py --check)"

# --- Alerts and dashboard ---------------------------------------------------------
promtool check rules deploy/monitoring/carbridge-rules.yml >"$tmp/promtool" 2>&1 ||
  { cat "$tmp/promtool" >&2; fail "promtool check rules deploy/monitoring/carbridge-rules.yml"; }
ok "promtool check rules: $(grep -o '[0-9]* rules found' "$tmp/promtool")"
promtool test rules deploy/monitoring/carbridge-rules.test.yml >"$tmp/promtool" 2>&1 ||
  { cat "$tmp/promtool" >&2; fail "promtool test rules deploy/monitoring/carbridge-rules.test.yml"; }
ok "promtool test rules: $(grep -c 'alertname:' deploy/monitoring/carbridge-rules.test.yml) alert tests pass"
"$py" deploy/monitoring/check.py "$tmp/dashboard-rules.yml" || exit 1
promtool check rules "$tmp/dashboard-rules.yml" >"$tmp/promtool" 2>&1 ||
  { cat "$tmp/promtool" >&2; fail "promtool cannot parse the dashboard's expressions"; }
ok "promtool parses the dashboard's expressions"

# --- Overlays -----------------------------------------------------------------
overlays=()
for dir in "$k8s"/overlays/*; do
  [ -f "$dir/kustomization.yaml" ] && overlays+=("$(basename "$dir")")
done
((${#overlays[@]})) || fail "no overlays under $k8s/overlays"

# Every component is used by some overlay, so every one is rendered below.
for dir in "$k8s"/components/*; do
  component=$(basename "$dir")
  grep -qs -- "components/$component\$" "$k8s"/overlays/*/kustomization.yaml ||
    fail "component $component is used by no overlay, so nothing checks it"
done
ok "every component is used by an overlay"

gateway_bin=${GATEWAY_BIN:-}
if [ -z "$gateway_bin" ]; then
  for candidate in target/release/gateway target/debug/gateway; do
    [ -x "$candidate" ] && { gateway_bin=$candidate; break; }
  done
fi

# Overlays that must not render until the operator gives a value, the
# local-config ConfigMap that carries it, and test values to render them
# with: a documentation network (RFC 5737), never a guess of a real one.
declare -A needs_values=([production-nlb]=carbridge-load-balancer)
declare -A test_values=([production-nlb]='trusted-networks=["192.0.2.0/24"]')
export EXPECT_TRUSTED_NETWORKS='["192.0.2.0/24"]'

for overlay in "${overlays[@]}"; do
  out="$tmp/$overlay.yaml"
  dir="$k8s/overlays/$overlay"
  if [ -n "${needs_values[$overlay]:-}" ]; then
    settings=${needs_values[$overlay]}
    if kubectl kustomize "$dir" >/dev/null 2>"$tmp/err"; then
      fail "$overlay: renders without the ConfigMap $settings: it must not carry a guess"
    fi
    grep -q "nothing selected by ConfigMap.*/$settings" "$tmp/err" ||
      { cat "$tmp/err" >&2; fail "$overlay: fails to render, but not for want of $settings"; }
    ok "$overlay: refuses to render until the overlay provides the ConfigMap $settings"
    # A copy of the tree, with the overlay given test values.
    rm -rf "$tmp/values" && cp -r "$k8s" "$tmp/values"
    dir="$tmp/values/overlays/$overlay"
    cat >>"$dir/kustomization.yaml" <<EOF

configMapGenerator:
  - name: $settings
    literals:
      - '${test_values[$overlay]}'
    options:
      disableNameSuffixHash: true
      annotations:
        config.kubernetes.io/local-config: "true"
EOF
  fi
  kubectl kustomize "$dir" >"$out" 2>"$tmp/err" ||
    { cat "$tmp/err" >&2; fail "$overlay: kubectl kustomize"; }
  with=""
  [ -n "${needs_values[$overlay]:-}" ] && with=" (with ${test_values[$overlay]})"
  ok "$overlay: kubectl kustomize renders $(grep -c '^kind:' "$out") objects$with"

  node "$node_dir/crds.mjs" "$out" "$tmp/builtin.yaml" >"$tmp/crds" 2>&1 ||
    { cat "$tmp/crds" >&2; fail "$overlay: custom resources (deploy/checks/crds.mjs)"; }
  ok "$overlay: $(cat "$tmp/crds")"

  for version in "${versions[@]}"; do
    if ! "$py" -m kubernetes_validate --strict --quiet -k "$version" "$tmp/builtin.yaml" >"$tmp/kv" 2>&1 ||
      grep -qE '^(WARN|ERROR)' "$tmp/kv"; then
      cat "$tmp/kv" >&2
      fail "$overlay: kubernetes-validate --strict -k $version"
    fi
    ok "$overlay: kubernetes-validate --strict -k $version"
  done

  if [ -n "$gateway_bin" ]; then
    "$py" scripts/py/k8s_gateway.py toml "$out" >"$tmp/gateway.toml"
    # check-config loads every file the configuration names: give it test
    # files in the Secrets' layout where the pods would have the real ones.
    [ -f "$tmp/pki/tickets" ] || deploy/checks/test-pki.sh "$tmp/pki" ||
      fail "could not make test TLS files (deploy/checks/test-pki.sh)"
    sed -i "s#\"/etc/carbridge/tls/#\"$tmp/pki/#g" "$tmp/gateway.toml"
    env -u CARBRIDGE_CONFIG "$gateway_bin" check-config --config "$tmp/gateway.toml" \
      >/dev/null 2>"$tmp/err" || { head -n 20 "$tmp/err" >&2; fail "$overlay: gateway check-config"; }
    ok "$overlay: gateway.toml passes $gateway_bin check-config (TLS files: test ones, same names)"
  fi
done
[ -n "$gateway_bin" ] || note "no gateway binary (GATEWAY_BIN, target/*/gateway): gateway.toml not parsed"

# --- The gateway under the profile ---------------------------------------------
# The gateway itself, under the profile as runc would load it: it must
# start, serve /readyz and stop cleanly on SIGTERM; with io_uring_setup
# left out of the profile it must refuse to start and name the profile.
if [ -n "$gateway_bin" ] && python3 scripts/py/k8s_gateway.py has-libseccomp; then
  admin_port=$(python3 scripts/py/k8s_gateway.py free-port)
  gateway_cmd=$(python3 scripts/py/k8s_gateway.py argv-json "$gateway_bin" \
    --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$admin_port" --shards 2 --no-downlink \
    --kafka-bootstrap 127.0.0.1:1)
  SECCOMP_EXEC=$gateway_cmd "$py" "$seccomp_check" "$profile" >"$tmp/under-profile.log" 2>&1 &
  under=$!
  ready=""
  for _ in $(seq 200); do
    if curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$under" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$ready" ] || { cat "$tmp/under-profile.log" >&2; fail "the gateway did not become ready under the seccomp profile"; }
  pkill -TERM -f -- "--admin-listen 127.0.0.1:$admin_port" || true
  wait "$under" || { cat "$tmp/under-profile.log" >&2; fail "the gateway under the seccomp profile did not stop cleanly"; }
  ok "the gateway runs under the seccomp profile: ready, then stopped cleanly on SIGTERM"
  if SECCOMP_DROP=io_uring_setup SECCOMP_EXEC=$gateway_cmd "$py" "$seccomp_check" "$profile" \
    >"$tmp/refused.log" 2>&1; then
    fail "the gateway started under a profile without io_uring_setup"
  fi
  grep -q seccomp "$tmp/refused.log" || { cat "$tmp/refused.log" >&2; fail "the refusal does not name the seccomp profile"; }
  ok "without io_uring_setup in the profile the gateway refuses to start and names the seccomp profile"
else
  note "no gateway binary or no libseccomp: the gateway was not run under the profile"
fi

# --- Policy -------------------------------------------------------------------
"$py" deploy/checks/policy.py "$tmp" "${overlays[@]}" || exit 1

ok "deploy/k8s: all checks passed"
