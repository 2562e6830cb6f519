#!/usr/bin/env bash
# Installs every system dependency ferrogate's build, tests and lab need on a
# fresh Debian 12 (or Ubuntu) machine. Idempotent: safe to run again.
#   FG_HUGEPAGES=N ./vendor-setup.sh   also reserves N 2 MB hugepages.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "vendor-setup.sh: run as root (it installs packages and mounts bpffs)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
packages=(
  # build: the XDP program is C, compiled by clang for the bpf target
  clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config make gcc
  # numa/: hwloc topology (hwlocality links the system libhwloc)
  libhwloc-dev libudev-dev
  # lab and tests
  iproute2 ethtool iputils-ping procps psmisc nginx-light curl wrk
  python3 python3-scapy tcpdump
  # HTTP/3 client for the lab test (tests/scripts/h3_client.py): aioquic
  # from PyPI (below) in a venv
  python3-venv
  # TLS tests: curl/openssl s_client clients, testssl.sh (installs `testssl`)
  openssl testssl.sh
  # bench/: the kernel baselines ferrogate is compared with
  haproxy iptables nftables
  # bench `l4`: nginx `stream {}` (TCP/UDP proxying) is a dynamic module in
  # Debian, not in nginx-light: /usr/lib/nginx/modules/ngx_stream_module.so
  libnginx-mod-stream
  # HTTP/2 clients: h2load, nghttp (the h2 tests and bench scenario)
  nghttp2-client
  # bench `h3`: Caddy (2.6 in bookworm) is the HTTP/3 reference peer
  caddy
  # L4 (TCP listener) tests: iperf3, and redis-server driven by redis-benchmark
  iperf3 redis-server redis-tools
  # UDP listener tests: dig (bind9-dnsutils) against a dnsmasq origin
  bind9-dnsutils dnsmasq-base
  # DPDK backend (engine/dpdk-sys: pkg-config libdpdk + bindgen, which needs
  # libclang); dpdk-dev has dpdk-testpmd, dpdk has dpdk-devbind.py
  libdpdk-dev dpdk dpdk-dev libclang-dev
  # The status page's browser test: Debian's headless Chromium, driven by
  # playwright-core (npm, below) under node
  chromium nodejs
  # packaging: `logrotate -d` checks packaging/logrotate/ferrogate; the .deb
  # test (tests/tests/package_deb.rs) runs `systemd-analyze verify` on the
  # packaged unit (systemd need not be PID 1), which looks its
  # Documentation=man:ferrogate(1) up with man; readelf (binutils) lists the
  # libraries the binary needs
  logrotate systemd man-db binutils
  # fleet mode: the fleet tests start their own etcd members (3.4 in
  # bookworm) on loopback; etcdctl puts what a publisher would not
  etcd-server etcd-client
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "vendor-setup.sh: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# nginx is a lab peer and origin, started per test in namespaces; the distro
# service must not hold port 80 on the host.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
  # Likewise etcd: the tests run their own members on free ports.
  systemctl disable --now etcd >/dev/null 2>&1 || true
  # And caddy (its package starts caddy.service on :80): the h3 bench runs its own.
  systemctl disable --now caddy >/dev/null 2>&1 || true
fi

# bpffs for pinned maps (the engine does not pin by default, but operators do).
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf || echo "vendor-setup.sh: could not mount bpffs (continuing)" >&2
fi

if [ -n "${FG_HUGEPAGES:-}" ]; then
  echo "$FG_HUGEPAGES" > /proc/sys/vm/nr_hugepages
  echo "vendor-setup.sh: hugepages: $(cat /proc/sys/vm/nr_hugepages) x 2 MB"
  # DPDK's EAL finds hugepages through a hugetlbfs mount (systemd usually
  # mounts /dev/hugepages; containers often do not).
  if ! grep -q hugetlbfs /proc/mounts; then
    mkdir -p /dev/hugepages
    mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages \
      || echo "vendor-setup.sh: could not mount hugetlbfs (continuing)" >&2
  fi
fi

# httpwg (httpwg-cli: a Rust port of h2spec, the HTTP/2 conformance suite the
# h2 lab test runs); built from crates.io once, pinned.
if ! command -v httpwg >/dev/null 2>&1; then
  echo "vendor-setup.sh: installing httpwg-cli 0.2.5"
  cargo install httpwg-cli --version 0.2.5 --locked --root /usr/local --quiet
fi

# cargo-fuzz: fuzz/run.sh builds and runs the libFuzzer targets in fuzz/
# (stable Rust, no sanitizer); built from crates.io once, pinned.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "vendor-setup.sh: installing cargo-fuzz 0.13.2"
  cargo install cargo-fuzz --version 0.13.2 --locked --root /usr/local --quiet
fi

# cargo-deb: packaging/build-deb.sh and tests/tests/package_deb.rs build the
# .deb with it; built from crates.io once, pinned (about 2 minutes on 2 cores;
# skipped when this version is already installed).
cargo_deb_version=3.8.0
if [ "$(cargo-deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
  echo "vendor-setup.sh: installing cargo-deb $cargo_deb_version"
  cargo install cargo-deb --version "$cargo_deb_version" --locked --root /usr/local --quiet --force
fi

# npm: some nodejs builds bring their own (nodesource's), Debian's comes
# apart and conflicts with those; install it only when there is none.
if ! command -v npm >/dev/null 2>&1; then
  echo "vendor-setup.sh: installing npm"
  apt-get install -y -qq --no-install-recommends npm
fi

# Plugin tests (stack/plugins): proxy-wasm filters written in AssemblyScript
# against a real SDK, both from npm (pinned in tests/as/package-lock.json),
# built into tests/as/build/ (skipped when up to date).
"$(dirname "$0")/stack/plugins/tests/as/build.sh"

# playwright-core for tests/browser (the status page's lab test), pinned by
# its package-lock.json; it drives /usr/bin/chromium and downloads no browser.
browser_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tests/browser"
if [ -f "$browser_dir/package-lock.json" ] && [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
  echo "vendor-setup.sh: installing tests/browser's npm packages"
  (cd "$browser_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

# aioquic (PyPI; not packaged by Debian) for tests/scripts/h3_client.py, the
# HTTP/3 client of tests/tests/h3_e2e.rs, in a venv of Debian's python3,
# pinned; skipped when that version is already there.
aioquic_version=1.7.2
fg_py=/opt/ferrogate/py
if [ "$("$fg_py/bin/python" -c 'import importlib.metadata as m; print(m.version("aioquic"))' 2>/dev/null)" != "$aioquic_version" ]; then
  echo "vendor-setup.sh: installing aioquic $aioquic_version into $fg_py"
  [ -x "$fg_py/bin/pip" ] || /usr/bin/python3 -m venv "$fg_py"
  "$fg_py/bin/pip" install --quiet --disable-pip-version-check "aioquic==$aioquic_version"
fi

# Rust toolchain: the machine's stable rustup toolchain; add components we use.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
echo "vendor-setup.sh: done"
