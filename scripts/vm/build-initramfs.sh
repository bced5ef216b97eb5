#!/bin/bash
# Build the micro-VM's tiny initramfs: busybox-static, the modules needed to
# mount a 9p root over virtio, and scripts/vm/initramfs-init.sh as /init.
# Everything else (rdma_rxe, nfit, ...) is modprobe'd later from the host's
# /lib/modules, which the guest sees through the 9p root.
#
# usage: build-initramfs.sh KERNEL_VERSION OUTPUT.cpio.gz
set -euo pipefail

kver=${1:?usage: build-initramfs.sh KERNEL_VERSION OUTPUT}
out=${2:?usage: build-initramfs.sh KERNEL_VERSION OUTPUT}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

# The leaves we need; their dependencies are computed, not hard-coded.
wanted=(virtio_pci 9pnet_virtio 9p)

die() { echo "build-initramfs: $*" >&2; exit 1; }

[[ -d /lib/modules/$kver ]] || die "no /lib/modules/$kver (install linux-image-amd64)"
busybox=$(command -v busybox || true)
[[ -n $busybox ]] || die "busybox not found (install busybox-static)"
# A dynamically linked busybox would need its libraries in the initramfs.
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked (install busybox-static)"
fi
for tool in modinfo cpio gzip; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,newroot,lib/modules}

# Depth-first walk: dependencies are emitted before the module needing them.
declare -A seen=()
order=()
visit() {
  local mod=$1 dep file
  mod=${mod//-/_}
  [[ -n ${seen[$mod]:-} ]] && return 0
  seen[$mod]=1
  file=$(modinfo -k "$kver" -n "$mod") || die "module $mod not found for $kver"
  # Built-in modules need no insmod.
  if [[ $file == "(builtin)" || $file != /* ]]; then return 0; fi
  local deps=()
  IFS=, read -ra deps <<<"$(modinfo -k "$kver" -F depends "$mod")"
  for dep in "${deps[@]}"; do
    [[ -n $dep ]] && visit "$dep"
  done
  # busybox insmod cannot read compressed modules: store them plain.
  case $file in
    *.ko) cp "$file" "$stage/lib/modules/$mod.ko" ;;
    *.ko.xz) xz -dc "$file" >"$stage/lib/modules/$mod.ko" ;;
    *.ko.zst) zstd -qdc "$file" >"$stage/lib/modules/$mod.ko" ;;
    *.ko.gz) gzip -dc "$file" >"$stage/lib/modules/$mod.ko" ;;
    *) die "unexpected module file $file" ;;
  esac
  order+=("$mod")
}
for m in "${wanted[@]}"; do visit "$m"; done
printf '%s\n' "${order[@]}" >"$stage/lib/modules/order"

cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
install -m 0755 "$here/initramfs-init.sh" "$stage/init"

# Write next to the target and rename, so a concurrent run never sees half a file.
tmp="$out.tmp.$$"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) \
  | gzip -1 >"$tmp"
mv -f "$tmp" "$out"
echo "build-initramfs: $out (modules: ${order[*]})" >&2
