# Shared by scripts/dev and scripts/test: make sure the toolchain and system packages the
# build needs are present, installing them when we can (root) and otherwise printing the
# exact command to run.

need_cmd() {
  command -v "$1" >/dev/null 2>&1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif need_cmd sudo; then sudo "$@"; else return 1; fi
}

ensure_rust() {
  if ! need_cmd cargo; then
    echo "cargo is missing. Install Rust with:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" >&2
    exit 1
  fi
}

# librocksdb-sys needs libclang (bindgen) and a C++ compiler.
ensure_build_packages() {
  local missing=()
  # libclang.so itself, not libclang-cpp.so (which machines often have without it).
  if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
    && ! compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null \
    && ! compgen -G '/usr/lib/*/libclang.so*' >/dev/null \
    && ! compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null; then
    missing+=(libclang-dev)
  fi
  need_cmd g++ || missing+=(g++)
  need_cmd make || missing+=(make)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing build packages: ${missing[*]}" >&2
    if ! (as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"); then
      echo "could not install ${missing[*]}; run as root:" >&2
      echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
}

# ensure_cargo_subcommand SUBCOMMAND CRATE: installs CRATE when `cargo SUBCOMMAND` is missing.
ensure_cargo_subcommand() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    echo "installing $2" >&2
    cargo install --locked "$2" >&2 || {
      echo "could not install $2; run: cargo install --locked $2" >&2
      exit 1
    }
  fi
}

ensure_nextest() { ensure_cargo_subcommand nextest cargo-nextest; }

ensure_cargo_fuzz() { ensure_cargo_subcommand fuzz cargo-fuzz; }
