#!/usr/bin/env bash
# Installs or upgrades picocloud on a Debian host (bookworm or newer), as a systemd service.
# Idempotent: run it again after `git pull` to upgrade; your config and state are kept.
#
#   sudo deploy/install.sh [--prefix DIR] [--no-packages] [--no-start] [--dry-run]
#
# What it does:
#   1. installs the Debian packages the daemon uses (QEMU, WireGuard, dnsmasq, nftables, iproute2…)
#      and npm when it is missing;
#   2. copies this source tree to PREFIX (default /opt/picocloud) and runs `npm ci --omit=dev`
#      there; the pinned Node.js 24 that runs picocloud (node_modules/node) is a dependency, so it
#      comes along, and bin/picocloud always runs on it, never on the system's Node (npm's warning
#      that the system's Node is older than the `engines` field is about npm's own Node: dropped);
#   3. links /usr/local/bin/picocloud, creates the `picocloud` group (may use the socket);
#   4. puts /etc/picocloud/config.toml in place if there is none (a copy of
#      deploy/config.example.toml, every setting commented out) and refreshes config.example.toml;
#   5. installs picocloud.service, enables it, and starts it (restarts it on an upgrade: running VMs
#      are kept and adopted by the new daemon).
set -euo pipefail

prefix=/opt/picocloud
packages=yes
start=yes
dry=no
src=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
args="$*"

usage () {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --no-packages) packages=no; shift ;;
    --no-start) start=no; shift ;;
    --dry-run) dry=yes; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$prefix" in
  /*) prefix=${prefix%/} ;;
  *) echo "install.sh: --prefix must be an absolute path, got $prefix" >&2; exit 2 ;;
esac

# Prints each step; runs it unless --dry-run.
run () {
  printf '+ %s\n' "$*"
  if [ "$dry" = no ]; then "$@"; fi
}
say () { printf '\n==> %s\n' "$*"; }

if [ "$dry" = no ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo $0 $args), or try --dry-run to see the steps" >&2
  exit 1
fi
for f in package.json package-lock.json bin/picocloud deploy/picocloud.service deploy/config.example.toml deploy/sysusers.d/picocloud.conf; do
  [ -e "$src/$f" ] || { echo "install.sh: $src/$f is missing: run this script from a picocloud source tree" >&2; exit 1; }
done

# 1. Debian packages: what the daemon runs (a subset of .ci/install-system-packages, which also
#    has the test-only tools).
runtime_packages=(
  iproute2 procps ca-certificates
  wireguard-tools wireguard-go          # kernel WireGuard is used when present; wireguard-go otherwise
  dnsmasq-base nftables                 # DHCP/RA per private network, host NAT
  qemu-system-x86 qemu-utils genisoimage  # VMs (KVM when /dev/kvm works, else TCG), overlays, cloud-init seeds
)
if [ "$packages" = yes ]; then
  say "Debian packages"
  command -v apt-get >/dev/null || { echo "install.sh: no apt-get: install the equivalents of ${runtime_packages[*]} and npm by hand, then run with --no-packages" >&2; exit 1; }
  missing=()
  for p in "${runtime_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  command -v npm >/dev/null || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "all installed"
  fi
fi
if [ "$dry" = no ]; then
  command -v npm >/dev/null || { echo "install.sh: npm is missing (apt-get install npm)" >&2; exit 1; }
fi

# 2. The code, with its own Node.js. Built next to the old copy and swapped in, so a failed
#    `npm ci` leaves the running install alone.
say "picocloud in $prefix"
if [ "$(readlink -f "$src")" = "$(readlink -f "$prefix" 2>/dev/null || echo "$prefix")" ]; then
  # Installing from the copy in PREFIX itself (e.g. after `git pull` there): dependencies only.
  run bash -c "cd '$prefix' && npm ci --omit=dev --no-audit --no-fund 2> >(grep -v EBADENGINE >&2)"
else
  run rm -rf "$prefix.new"
  run mkdir -p "$prefix.new"
  run bash -c "cd '$src' && tar --exclude=./node_modules --exclude=./.git -cf - . | tar -xf - -C '$prefix.new'"
  run bash -c "cd '$prefix.new' && npm ci --omit=dev --no-audit --no-fund 2> >(grep -v EBADENGINE >&2)"
  run "$prefix.new/node_modules/node/bin/node" --version
  if [ -e "$prefix" ]; then
    run rm -rf "$prefix.old"
    run mv "$prefix" "$prefix.old"
  fi
  run mv "$prefix.new" "$prefix"
  run rm -rf "$prefix.old"
fi
run chmod 0755 "$prefix" "$prefix/bin/picocloud"
run ln -sfn "$prefix/bin/picocloud" /usr/local/bin/picocloud

# 3. The socket group.
say "group picocloud"
run install -D -m 0644 "$src/deploy/sysusers.d/picocloud.conf" /usr/lib/sysusers.d/picocloud.conf
if command -v systemd-sysusers >/dev/null; then
  run systemd-sysusers /usr/lib/sysusers.d/picocloud.conf
elif ! getent group picocloud >/dev/null; then
  run groupadd --system picocloud
fi

# 4. Configuration: never overwrite the operator's file.
say "configuration in /etc/picocloud"
run install -d -m 0755 /etc/picocloud
run install -m 0644 "$src/deploy/config.example.toml" /etc/picocloud/config.example.toml
if [ -e /etc/picocloud/config.toml ]; then
  echo "keeping /etc/picocloud/config.toml (compare with config.example.toml for new settings)"
else
  run install -m 0644 "$src/deploy/config.example.toml" /etc/picocloud/config.toml
fi

# 5. The service.
say "systemd service"
unit=/etc/systemd/system/picocloud.service
run bash -c "sed 's|/opt/picocloud|$prefix|g' '$src/deploy/picocloud.service' > '$unit.tmp' && chmod 0644 '$unit.tmp' && mv '$unit.tmp' '$unit'"
if [ -d /run/systemd/system ] || [ "$dry" = yes ]; then
  run systemctl daemon-reload
  run systemctl enable picocloud.service
  if [ "$start" = yes ]; then
    if [ "$dry" = no ] && systemctl is-active --quiet picocloud.service; then
      run systemctl restart picocloud.service
    else
      run systemctl start picocloud.service
    fi
  fi
else
  echo "systemd is not running here: start the daemon yourself with $prefix/bin/picocloud daemon"
fi

cat <<EOF

picocloud $("$prefix/node_modules/node/bin/node" -p "require('$prefix/package.json').version" 2>/dev/null || echo '') is installed.
  logs:     journalctl -u picocloud -f
  status:   picocloud status
  config:   /etc/picocloud/config.toml (then: systemctl restart picocloud)
  operators of this host: adduser <user> picocloud   (then log in again)
Next: found a mesh (picocloud init) or join one: see $prefix/docs/guide.md
EOF
