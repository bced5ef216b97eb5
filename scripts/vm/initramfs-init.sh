#!/bin/sh
# Stage 1 of the micro-VM (runs as /init from the initramfs, busybox only):
# load the 9p/virtio modules, mount the host's / read-only, lay tmpfs over the
# places that must be writable, mount the project directory read-write at its
# host path, then switch_root into the host's file system and hand over to
# stage 2 (scripts/vm/guest-init.sh, read live from the project share).
#
# The kernel passes unknown NAME=VALUE boot parameters to init as environment:
#   npmu_proj  base64 of the project's absolute path (any characters allowed)
#   npmu_run   name of this run's directory under $proj/.cache/vm/runs
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
  echo "rxe-vm stage1: $*" >/dev/console
  poweroff -f
}

mount -t devtmpfs dev /dev 2>/dev/null
while read -r mod; do
  insmod "/lib/modules/$mod.ko" || fail "insmod $mod failed"
done </lib/modules/order

# shellcheck disable=SC2154 # both come from the kernel command line
proj=$(echo "$npmu_proj" | base64 -d) || fail "bad npmu_proj"
if [ -z "$proj" ] || [ -z "$npmu_run" ]; then fail "npmu_proj/npmu_run missing"; fi

# The root is read-only and never changes while a run lasts, so it may be
# cached loosely (faster exec of node & co); the project share is written by
# both sides, so it is not cached (cache=mmap still allows shared mmap).
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" hostroot /newroot || fail "cannot mount 9p root"
r=/newroot
mount -t devtmpfs dev "$r/dev" || fail "mount /dev"
mount -t proc proc "$r/proc"
mount -t sysfs sys "$r/sys"
mkdir -p "$r/dev/pts" "$r/dev/shm" 2>/dev/null
mount -t devpts devpts "$r/dev/pts"
for d in /tmp /run /dev/shm; do
  mount -t tmpfs -o mode=1777 tmpfs "$r$d" || fail "tmpfs on $d"
done
# After /tmp is a tmpfs, a project under the host's /tmp has no mount point yet.
[ -d "$r$proj" ] || mkdir -p "$r$proj" || fail "no mount point for $proj"
mount -t 9p -o "$opts,cache=mmap" npmuproj "$r$proj" || fail "cannot mount project share at $proj"

stage2=$proj/scripts/vm/guest-init.sh
[ -r "$r$stage2" ] || fail "$stage2 not readable in guest"
exec switch_root "$r" /bin/sh "$stage2" "$proj/.cache/vm/runs/$npmu_run"
