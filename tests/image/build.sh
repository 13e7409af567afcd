#!/usr/bin/env bash
# Builds the pachgate image the way the Dockerfile describes it, with no registry: a stand-in
# for gcr.io/distroless/cc-debian12:nonroot assembled on `scratch` from this machine's Debian
# files (glibc and whatever else the binary links, libgcc_s, the CA bundle, /etc/passwd and
# /etc/group with 65532 "nonroot", /tmp, /home/nonroot), then the repository's Dockerfile
# itself, built by buildah with its `build` stage replaced by the given release binary and
# its base by the stand-in.
#
#   tests/image/build.sh BINARY IMAGE
#
# Storage and configuration come from the environment (CONTAINERS_STORAGE_CONF,
# CONTAINERS_CONF); tests/container_image.rs points them at a temporary directory.
set -euo pipefail

binary=$1
image=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
distroless=gcr.io/distroless/cc-debian12:nonroot
base=localhost/pachgate-distroless-standin:latest

if ! grep -qx "FROM $distroless" "$repo/Dockerfile"; then
    echo "build.sh: the Dockerfile's base is no longer $distroless; update this stand-in" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"

# What distroless/cc-debian12 ships besides glibc: libgcc_s, libstdc++, libgomp, OpenSSL 3.
# The binary may link nothing else, or the Dockerfile's base could not run it.
allowed='^(linux-vdso|ld-linux-[a-z0-9_-]+|libc|libm|libdl|libpthread|librt|libutil|libresolv|libgcc_s|libstdc\+\+|libgomp|libssl|libcrypto)\.so'
copy_lib() {
    mkdir -p "$root$(dirname "$1")"
    cp -L "$1" "$root$1"
}
while read -r line; do
    name=${line%% *}
    name=${name##*/}
    if ! [[ $name =~ $allowed ]]; then
        echo "build.sh: $binary links $name, which distroless/cc-debian12 does not ship" >&2
        exit 1
    fi
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
    path=$(sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; t; s/^\(\/[^ ]*\) .*/\1/p' <<<"$line")
    [ -n "$path" ] && copy_lib "$path"
done < <(ldd "$binary" | sed 's/^[[:space:]]*//')
# Always there in cc-debian12, linked or not (a Rust binary unwinds through it).
for dir in /lib/x86_64-linux-gnu /lib/aarch64-linux-gnu; do
    if [ -e "$dir/libgcc_s.so.1" ] && [ ! -e "$root$dir/libgcc_s.so.1" ]; then
        copy_lib "$dir/libgcc_s.so.1"
    fi
done

mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/root"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$root/tmp"
chmod 700 "$root/home/nonroot" "$root/root"
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
tty:x:5:
staff:x:50:
nobody:x:65534:
nonroot:x:65532:
GROUP
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$root" / >/dev/null
buildah copy --quiet --chown 65532:65532 "$ctr" "$root/home/nonroot" /home/nonroot >/dev/null
buildah config \
    --user 65532 \
    --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$base" >/dev/null

# The Dockerfile's `build` stage produces /src/target/release/pachgate: given instead.
mkdir -p "$work/build/src/target/release"
cp "$binary" "$work/build/src/target/release/pachgate"
# The runtime stage copies nothing from the context: an empty one, not the repository.
mkdir -p "$work/context"
buildah bud --quiet --pull=never \
    --build-context "build=$work/build" \
    --build-context "$distroless=container-image://$base" \
    -f "$repo/Dockerfile" -t "$image" "$work/context"
