#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on a fresh Debian machine with Rust.
# Safe to run again. Needs root (or sudo) for apt-get.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# g++: libFuzzer (the fuzz targets) and aws-lc-sys (ZooKeeper TLS) compile C and C++ sources;
# procps: `ps` in the demo's summary; libnetty-java/libslf4j-java: jars the ZooKeeper harness
# puts on its classpath (pulled in by zookeeper today, named so a packaging change is caught);
# xz-utils: the Consul/Kubernetes test harnesses decompress ../shared/servers/*.xz; openssl: the
# kube-apiserver harness makes its service-account key pair; etcd-client: its etcdctl compacts
# the API server's etcd in the watch-Resync check and writes the hand-made leader key of the
# daemon's garbage-key test; libssl-dev + pkg-config: Consul's HTTPS client (native-tls), built
# into the daemon and exercised against a TLS agent.
PACKAGES=(protobuf-compiler libprotobuf-dev libssl-dev pkg-config g++ etcd-server etcd-client zookeeper
  libnetty-java libslf4j-java default-jre-headless postgresql curl procps xz-utils openssl)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# kubectl: the deploy test compares its Kubernetes objects with `kubectl kustomize`'s rendering
# (without kubectl it says so and skips that comparison). Debian's kubernetes-client only when
# no kubectl is on PATH: another package (Google's SDK) may own /usr/bin/kubectl already.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts services from package scripts where it can; the tests start their own servers.
for svc in etcd zookeeper postgresql; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
done
for c in protoc etcd etcdctl java c++ curl ps xz openssl sha256sum kubectl; do
  command -v "$c" >/dev/null || { echo "setup: $c is missing after the install"; exit 1; }
done
# PostgreSQL's own programs, run by the daemon's native resource and its e2e tests.
for prog in initdb pg_ctl pg_basebackup pg_rewind pg_controldata postgres psql; do
  test -x "/usr/lib/postgresql/15/bin/$prog" || { echo "setup: /usr/lib/postgresql/15/bin/$prog is missing after the install"; exit 1; }
done
for jar in zookeeper slf4j-simple netty-codec netty-resolver; do
  test -f "/usr/share/java/$jar.jar" || { echo "setup: /usr/share/java/$jar.jar is missing after the install"; exit 1; }
done
echo "setup: ok (protoc $(protoc --version | cut -d' ' -f2), etcd $(etcd --version | head -1 | awk '{print $3}'), zookeeper $(dpkg-query -W -f='${Version}' zookeeper))"
