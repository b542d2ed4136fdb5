#!/usr/bin/env bash
# Run every test of hsmpool: build the workspace (the PKCS #11 module, the CLI, the harness),
# then all unit, conformance and interop tests. Interop tests need Debian packages; when they
# are missing and we are root, they are installed first (tests fail, never skip, without them).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(opensc p11-kit libp11-kit-dev gcc valgrind openssl procps fonts-dejavu-core softhsm2
          libengine-pkcs11-openssl gnutls-bin libnss3-tools openjdk-17-jdk-headless
          meson ninja-build pkg-config libssl-dev expect tzdata)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing test dependencies: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "warning: missing Debian packages (interop tests will fail): ${missing[*]}" >&2
    fi
fi

cargo build --workspace --all-targets
# The interop suites (tests/interop/, one per client, each against the embedded default and a
# three-daemon cluster) run uncaptured so their "N passed, M failed" lines show; then the rest.
cargo test -p hsmpool-tests --test 'interop_*' -- --nocapture --test-threads 1
cargo test --workspace -- --skip interop_
