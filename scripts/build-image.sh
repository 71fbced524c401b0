#!/usr/bin/env bash
# Builds the carbridge image with podman where no image registry can be
# reached: deploy/Dockerfile's `prebuilt` target, on this host's release
# binaries, over a Debian base image made here with debootstrap.
#
#   scripts/build-image.sh [TAG]      default tag carbridge:dev
#
# IMAGE_BINARIES=DIR takes gateway, router, carbridge-topics and
# carbridge-send from DIR instead of building them (cargo build --release
# -p gateway -p router --bins, into target/release).
#
# The base: `debootstrap --variant=minbase bookworm` from the Debian
# archive this host's apt uses, with that archive's bookworm-updates and
# security suites in its sources (as the official image has), imported
# with `podman import` as localhost/carbridge-base:bookworm-minbase and
# passed to the Dockerfile as RUNTIME_BASE; slimmed as debian:*-slim is
# (no documentation, manual pages, translations or apt caches). Made once
# per machine: the root file system's tarball is kept in target/container/
# (75 MB)
# and imported again if the image is gone; IMAGE_NEW_BASE=1 makes it anew
# (to take the archive's updates).
#
# The image is built with `--runtime runc --pull=never`; its apt step (the
# runtime libraries) runs on the host's network and is cached by podman
# with the base, so a rebuild with new binaries only copies them.
# Root is needed (debootstrap, and podman's rootful storage, where
# scripts/container-test.sh runs it); sudo is used when not root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

tag=${1:-carbridge:dev}
release=bookworm
base=localhost/carbridge-base:$release-minbase
cache=target/container
tarball=$cache/$release-minbase.tar
mkdir -p "$cache"
bins=(gateway router carbridge-topics carbridge-send)
sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

export PATH="$PATH:/usr/sbin:/sbin"
command -v podman >/dev/null || { echo "podman not found: run scripts/setup.sh" >&2; exit 1; }

# The first URI of apt's sources (deb822 .sources or one-line .list) that
# matches PATTERN, else DEFAULT.
apt_uri() {
  local pattern=$1 default=$2 uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -Ev '^\s*#' | grep -oE '(https?|file)://[^ ]+' | grep -E "$pattern" | head -n 1) || true
  echo "${uri:-$default}"
}

make_tarball() {
  local mirror security root
  mirror=$(apt_uri '/debian/?$' http://deb.debian.org/debian)
  security=$(apt_uri '/debian-security/?$' http://deb.debian.org/debian-security)
  root=$cache/rootfs.tmp
  command -v debootstrap >/dev/null || { echo "debootstrap not found: run scripts/setup.sh" >&2; exit 1; }
  log "debootstrap --variant=minbase $release from $mirror, once per machine (a minute or two)"
  $sudo_cmd rm -rf "$root"
  $sudo_cmd debootstrap --variant=minbase "$release" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    { tail -n 20 "$cache/debootstrap.log" >&2; echo "debootstrap failed: see $cache/debootstrap.log" >&2; exit 1; }
  # The official image's sources: the release, its updates, its security
  # fixes; from the archive the host uses.
  $sudo_cmd rm -f "$root/etc/apt/sources.list"
  $sudo_cmd tee "$root/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: $mirror
Suites: $release $release-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $release-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Slim, as debian:bookworm-slim is: no documentation but the copyright
  # files, no manual pages, info pages or translations, now or from the
  # packages installed later (dpkg's path filters); and neither the
  # downloaded packages, nor the package lists (the Dockerfile fetches
  # fresh ones), nor logs.
  printf 'path-exclude=/usr/share/%s\n' 'doc/*' 'man/*' 'info/*' 'locale/*' |
    $sudo_cmd tee "$root/etc/dpkg/dpkg.cfg.d/carbridge-slim" >/dev/null
  echo 'path-include=/usr/share/doc/*/copyright' | $sudo_cmd tee -a "$root/etc/dpkg/dpkg.cfg.d/carbridge-slim" >/dev/null
  # apt keeps neither the downloaded packages nor its binary caches: the
  # Dockerfile's apt step then leaves only what it installed in its layer.
  printf '%s\n' 'APT::Keep-Downloaded-Packages "false";' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' |
    $sudo_cmd tee "$root/etc/apt/apt.conf.d/carbridge-slim" >/dev/null
  $sudo_cmd find "$root/usr/share/doc" -type f ! -name copyright -delete
  $sudo_cmd rm -rf "$root"/usr/share/{man,info,locale}/*
  $sudo_cmd find "$root/var/cache/apt" "$root/var/lib/apt/lists" "$root/var/log" -type f -delete
  $sudo_cmd tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  $sudo_cmd rm -rf "$root"
  mv "$tarball.tmp" "$tarball"
  log "made $tarball ($(du -m "$tarball" | cut -f1) MB) in $SECONDS s"
}

if [ -n "${IMAGE_NEW_BASE:-}" ]; then
  rm -f "$tarball"
  $sudo_cmd podman rmi -f "$base" >/dev/null 2>&1 || true
fi
if ! $sudo_cmd podman image exists "$base"; then
  [ -s "$tarball" ] || make_tarball
  log "podman import $tarball as $base"
  $sudo_cmd podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tarball" "$base" >/dev/null
fi

bin_dir=${IMAGE_BINARIES:-}
if [ -z "$bin_dir" ]; then
  log "release build of the gateway and the router"
  cargo build --release --locked -p gateway -p router --bins >"$cache/cargo.log" 2>&1 ||
    { tail -n 20 "$cache/cargo.log" >&2; echo "the release build failed: see $cache/cargo.log" >&2; exit 1; }
  tail -n 1 "$cache/cargo.log" >&2
  bin_dir=target/release
fi

# The build context: the four binaries, nothing else (the repository's own
# context leaves target/ out, and is not wanted here).
context=$cache/context
mkdir -p "$context"
for bin in "${bins[@]}"; do
  [ -x "$bin_dir/$bin" ] || { echo "$bin_dir/$bin: no such binary" >&2; exit 1; }
  cp -f "$bin_dir/$bin" "$context/$bin"
done

log "podman build --target prebuilt -t $tag (base $base)"
previous=$($sudo_cmd podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
$sudo_cmd podman build --runtime runc --pull=never --network host \
  --build-arg RUNTIME_BASE="$base" --target prebuilt \
  -f deploy/Dockerfile -t "$tag" "$context" >"$cache/build.log" 2>&1 ||
  { tail -n 30 "$cache/build.log" >&2; echo "podman build failed: see $cache/build.log" >&2; exit 1; }
# The image this tag named before is of no more use (the layers below the
# binaries stay, shared); one still used by a container stays too.
if [ -n "$previous" ] && [ "$previous" != "$($sudo_cmd podman image inspect --format '{{.Id}}' "$tag")" ]; then
  $sudo_cmd podman rmi "$previous" >/dev/null 2>&1 || true
fi
log "built $tag ($($sudo_cmd podman image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }'), $SECONDS s)"
