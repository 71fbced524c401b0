#!/usr/bin/env bash
# Builds the Debian package (target/debian/carbridge_<version>_<arch>.deb)
# from the workspace: the release binaries, the systemd units, the default
# configuration and the kernel settings (gateway/Cargo.toml,
# [package.metadata.deb]). With --install, also installs it with dpkg,
# checks that its gateway runs, and removes it again (what CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

if ! cargo deb --version >/dev/null 2>&1; then
  log "building cargo-deb from crates.io, once (a few minutes): it packages the workspace as a .deb"
  cargo install --locked cargo-deb
fi
log "release build of the gateway and the router"
cargo build --release --locked -p gateway -p router --bins 2>&1 | tail -n 1 >&2
deb=$(cargo deb -p gateway --no-build --output target/debian/ 2>/dev/null | tail -n 1)
[ -s "$deb" ] || { echo "cargo deb made no package" >&2; exit 1; }
log "made $deb ($(du -h "$deb" | cut -f1))"

if [ "${1:-}" = --install ]; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd dpkg -i "$deb" >/dev/null
  trap '$sudo_cmd dpkg -P carbridge >/dev/null' EXIT
  dpkg -L carbridge | grep -qx /lib/systemd/system/carbridge-gateway@.service
  dpkg -L carbridge | grep -qx /usr/lib/sysctl.d/90-carbridge.conf
  /usr/bin/gateway --version
  /usr/bin/gateway --config /etc/carbridge/gateway.toml check-config >/dev/null
  log "installed with dpkg: gateway --version runs, the default configuration checks; removed again"
fi
