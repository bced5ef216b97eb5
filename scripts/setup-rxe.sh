#!/bin/bash
# Make a soft-RoCE device (rxe0) available for npmu's tests and benchmarks.
# - Host kernel with rdma_rxe: load it and bind rxe0 to a netdev, idempotently.
# - Host kernel without it (no CONFIG_INFINIBAND / no modules, as on the
#   project's machines): install the qemu micro-VM test bed instead and boot it
#   once to prove rxe0 comes up there (scripts/rxe-vm.sh runs commands in it).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/setup-rxe.sh [--netdev IF]

If this host's kernel has rdma_rxe: install rdma-core/iproute2 if missing,
load rdma_rxe and create rxe0 on IF (default: the default route's interface);
no error if it exists. Otherwise: install the micro-VM test bed (qemu,
Debian's kernel, rdma-core, perftest, ...), build its initramfs and boot it
once to show rxe0 ACTIVE inside; then use scripts/rxe-vm.sh -- CMD.
Needs root to install packages or to configure the host.

options:
  --netdev IF   network interface to bind rxe0 to (host mode only)
  -h, --help    this text
EOF
}

say() { echo "setup-rxe: $*"; }
die() { echo "setup-rxe: $*" >&2; exit 1; }

netdev=
while (($#)); do
  case $1 in
    --netdev) [[ -n ${2:-} ]] || die "--netdev needs an interface"; netdev=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

# Install the Debian packages that are not installed yet; no apt at all when
# everything is there (CI machines and developers' machines are usually set up).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
  done
  ((${#missing[@]})) || { say "packages already installed"; return 0; }
  ((EUID == 0)) || die "missing packages (${missing[*]}); run as root or install them with apt-get"
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

host_has_rxe() {
  [[ -d /sys/module/rdma_rxe ]] && return 0
  [[ -d /lib/modules/$(uname -r) ]] && modprobe -n rdma_rxe 2>/dev/null
}

if host_has_rxe; then
  say "this kernel ($(uname -r)) has rdma_rxe: configuring rxe0 on the host"
  ensure_packages rdma-core ibverbs-providers ibverbs-utils iproute2 kmod
  ((EUID == 0)) || die "configuring rxe0 needs root"
  modprobe rdma_rxe
  if [[ -z $netdev ]]; then
    netdev=$(ip -o route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
    [[ -n $netdev ]] || die "no default route; pass --netdev IF"
  fi
  ip link show "$netdev" >/dev/null 2>&1 || die "no network interface $netdev"
  if [[ -e /sys/class/infiniband/rxe0 ]]; then
    say "rxe0 already exists"
  else
    rdma link add rxe0 type rxe netdev "$netdev"
    say "created rxe0 on $netdev"
  fi
  for _ in $(seq 100); do
    grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state && break
    sleep 0.1
  done
  rdma link show
  ibv_devices
  grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state \
    || die "rxe0 is not ACTIVE (is $netdev up?)"
  say "rxe0 is ACTIVE on this host"
  exit 0
fi

say "this kernel ($(uname -r)) has no rdma_rxe (no CONFIG_INFINIBAND or no"
say "/lib/modules/$(uname -r)): soft-RoCE runs in a qemu micro-VM instead"
# Debian 12 packages for the micro-VM test bed; scripts/system-packages.txt,
# when present, adds the project's build needs.
pkgs=(qemu-system-x86 linux-image-amd64 rdma-core ibverbs-providers ibverbs-utils
  libibverbs-dev librdmacm-dev rdmacm-utils perftest busybox-static cpio kmod
  iproute2 ndctl libpmem-dev fio librpma-dev)
if [[ -r $here/system-packages.txt ]]; then
  mapfile -t extra < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/system-packages.txt")
  pkgs+=("${extra[@]}")
fi
ensure_packages "${pkgs[@]}"

say "booting the micro-VM once (builds its initramfs on first use)"
start=$SECONDS
out=$("$here/rxe-vm.sh" --timeout 300 -- ibv_devinfo -d rxe0) || {
  echo "$out"
  die "the micro-VM did not run ibv_devinfo -d rxe0 successfully"
}
echo "$out"
grep -q PORT_ACTIVE <<<"$out" || die "rxe0 is not ACTIVE in the micro-VM"
say "rxe0 is ACTIVE in the micro-VM (boot + check took $((SECONDS - start)) s)"
say "run RDMA commands with: scripts/rxe-vm.sh -- CMD [ARGS...]"
