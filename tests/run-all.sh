#!/usr/bin/env bash
# Runs every pachgate test on a fresh Debian machine: installs the real peers the tests use
# (Debian: ruby-grpc for the official gRPC interop client/server, curl, openssl; buildah,
# podman and runc for the container image test; PyPI: grpcio, websockets, hpack and the
# rest of tests/requirements.txt), builds the release binary that test puts in the image,
# then runs the unit and end-to-end tests of the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
command -v ruby >/dev/null && ruby -e "require 'grpc'" 2>/dev/null || need_apt+=(ruby-grpc)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
# tests/container_image.rs: buildah builds the image, podman runs it with runc; the image
# carries this machine's CA bundle.
command -v buildah >/dev/null || need_apt+=(buildah)
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# python-pachyderm pins protobuf < 4: its own virtualenv (tests/pachyderm_clients.rs).
if [ ! -x target/python-pachyderm/bin/python ]; then
    python3 -m venv target/python-pachyderm
fi
target/python-pachyderm/bin/python -m pip install --quiet --disable-pip-version-check \
    -r tests/requirements-python-pachyderm.txt

# The binary the Dockerfile ships (release profile, lto = "fat"), for the container image
# test; the longest single step on a fresh machine (about 10 minutes on 2 cores).
cargo build --release --locked --bin pachgate

cargo test --workspace --all-targets

# A short, bounded fuzz run of every cargo-fuzz target (FUZZ_SECONDS each, default 30).
tests/fuzz-smoke.sh
