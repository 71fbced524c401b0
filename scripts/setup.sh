#!/usr/bin/env bash
# Installs what building and testing the project needs, skipping whatever
# is already there: Debian packages, tansu (the Kafka-compatible broker the
# tests start), cargo-fuzz and the nightly toolchain it runs on.
set -euo pipefail

export PATH="$HOME/.cargo/bin:$PATH"
TANSU_VERSION=0.6.0
log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

apt_packages=(
  build-essential pkg-config perl   # vendored librdkafka
  libssl-dev zlib1g-dev             # librdkafka's TLS/SASL and compression
  mosquitto-clients mosquitto       # third-party MQTT clients and peer broker
  python3-pip
  curl                              # scripts/stack.sh probes /readyz
)
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

if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "building tansu $TANSU_VERSION from crates.io (takes about 10 minutes)"
  cargo install --locked tansu --version "$TANSU_VERSION" --features dynostore
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain for cargo-fuzz"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
log "done"
