#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on a fresh Debian machine with Rust.
# Safe to run again. Needs root (or sudo) for apt-get.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
PACKAGES=(protobuf-compiler libprotobuf-dev libssl-dev pkg-config etcd-server etcd-client zookeeper default-jre-headless postgresql curl)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts services from package scripts where it can; the tests start their own servers.
for svc in etcd zookeeper postgresql; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
done
command -v protoc >/dev/null && command -v etcd >/dev/null && test -f /usr/share/java/zookeeper.jar
echo "setup: ok (protoc $(protoc --version | cut -d' ' -f2), etcd $(etcd --version | head -1 | awk '{print $3}'), zookeeper $(dpkg-query -W -f='${Version}' zookeeper))"
