#!/usr/bin/env bash
# Builds the `tributary:dev` container image from locally built binaries — no base image
# is pulled: the image is `FROM scratch` plus the binaries and the shared libraries `ldd`
# says they need.
#
#   deploy/build-image.sh [BIN_DIR] [TAG]     (defaults: target/debug, tributary:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:-target/debug}
tag=${2:-tributary:dev}
for b in tributary trib; do
  [ -x "$bin_dir/$b" ] || { echo "$bin_dir/$b is missing: run cargo build --workspace --all-targets first" >&2; exit 1; }
done
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/data"
cp "$bin_dir/tributary" "$bin_dir/trib" "$ctx/rootfs/usr/local/bin/"
# Every shared library either binary loads, at the same path as on this machine.
for lib in $(for b in tributary trib; do ldd "$bin_dir/$b"; done | awk '/=> \// {print $3} /^[ \t]*\// {print $1}' | sort -u); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV RUST_LOG=info,openraft=error
VOLUME /data
EXPOSE 7101
ENTRYPOINT ["/usr/local/bin/tributary"]
DOCKERFILE
docker build -q -t "$tag" "$ctx" >/dev/null
echo "built $tag from $bin_dir" >&2
