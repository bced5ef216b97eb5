#!/bin/sh
# Stage 2 of the micro-VM, PID 1 after switch_root into the host's read-only /.
# Brings up soft-RoCE (rxe0 on a guest-internal veth pair) and any emulated
# NVDIMMs as devdax, runs the command prepared by rxe-vm.sh with its output on
# two virtio-serial ports, records the exit status in the run directory (on
# the writable project share) and powers off.
#
# usage (by stage 1 only): guest-init.sh RUN_DIR
# RUN_DIR holds: cmd.sh (env + cwd + command, bash), ndimms and ndisks
# (counts), and receives rc (the command's exit status).
run=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
rxe_addr=10.77.0.1
bb=/bin/busybox
# Polls below use 0.05 s steps; TCG on a busy 2-core host can be slow, so
# give each wait up to 30 s before calling the set-up failed.
tries=600

# Messages go to the console (a log file on the host, shown when a run fails)
# and, once the port exists, to the host's stderr.
err=/dev/console
say() { echo "rxe-vm guest: $*" >"$err"; }
finish() {
  echo "$1" >"$run/rc.tmp" && mv -f "$run/rc.tmp" "$run/rc"
  sync
  $bb poweroff -f
}
fail() { say "$*"; echo "$*" >"$run/failed"; finish 125; }

# Output channels first: virtio-serial ports named by rxe-vm.sh.
modprobe virtio_console || fail "modprobe virtio_console"
port() {
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return 0; }
  done
  return 1
}
i=0
until out=$(port npmu.stdout) && err_port=$(port npmu.stderr) && [ -c "$out" ] && [ -c "$err_port" ]; do
  i=$((i + 1)); [ $i -lt $tries ] || fail "virtio-serial ports did not appear"
  sleep 0.05
done
err=$err_port

modprobe -a ib_core ib_uverbs rdma_ucm rdma_rxe veth || fail "modprobe rdma modules"
ip link set lo up
ip link add veth0 type veth peer name veth1 || fail "cannot create veth pair"
ip addr add "$rxe_addr/24" dev veth0
ip link set veth1 up
ip link set veth0 up
rdma link add rxe0 type rxe netdev veth0 || fail "rdma link add rxe0 failed"

# devdax alignment wanted for every NVDIMM: 4 KiB, so a unit's pages (and a
# region's granularity) are 4 KiB, not 2 MiB.
dax_align=4096

# NVDIMMs: rxe-vm.sh gives each one slot i (0-based, in command-line order);
# the NFIT device handle is slot+1. Map handle -> nmem -> region -> namespace.
ndimms=$(cat "$run/ndimms" 2>/dev/null || echo 0)
dax_devices=
if [ "$ndimms" -gt 0 ]; then
  modprobe -a nfit nd_pmem dax_pmem device_dax || fail "modprobe nvdimm modules"
  nd=/sys/bus/nd/devices
  slot=0
  while [ "$slot" -lt "$ndimms" ]; do
    handle=$((slot + 1)); region=; i=0
    while [ -z "$region" ]; do
      for m in "$nd"/region*/mapping0; do
        [ -r "$m" ] || continue
        nmem=$(cut -d, -f1 "$m")
        h=$(cat "$nd/$nmem/nfit/handle" 2>/dev/null) || continue
        [ $((h)) -eq "$handle" ] && region=$(basename "$(dirname "$m")")
      done
      [ -n "$region" ] && break
      i=$((i + 1)); [ $i -lt $tries ] || fail "no region for NVDIMM slot $slot"
      sleep 0.05
    done
    ns=namespace${region#region}.0
    # Later boots find the dax info block in the backing file and show
    # daxN.M directly; a fresh file shows up as a raw pmem block device first.
    dev=; i=0
    while :; do
      for d in "$nd/$region"/dax*/dax*.*; do
        [ -e "$d" ] && dev=/dev/${d##*/}
      done
      if [ -n "$dev" ] && [ -c "$dev" ]; then
        # A backing file from an older run may hold a namespace with another
        # alignment (2 MiB was the default): the file is scratch, recreate it.
        align=$(cat "/sys/bus/dax/devices/${dev##*/}/align" 2>/dev/null || echo 0)
        [ "$align" = "$dax_align" ] && break
        say "NVDIMM $slot: $dev has alignment $align, recreating $ns as devdax with $dax_align"
        ndctl create-namespace -f -e "$ns" -m devdax -a "$dax_align" >/dev/null 2>"$err" \
          || fail "ndctl create-namespace -f -e $ns -m devdax -a $dax_align failed"
        dev=
      elif ls -d "$nd/$ns"/block/pmem* >/dev/null 2>&1; then
        say "NVDIMM $slot: first boot of its backing file, converting $ns to devdax"
        ndctl create-namespace -f -e "$ns" -m devdax -a "$dax_align" >/dev/null 2>"$err" \
          || fail "ndctl create-namespace -f -e $ns -m devdax -a $dax_align failed"
      fi
      i=$((i + 1)); [ $i -lt $tries ] || fail "no devdax device for NVDIMM $slot ($region, not raw nor devdax?)"
      sleep 0.05
    done
    dax_devices="$dax_devices${dax_devices:+ }$dev"
    slot=$((slot + 1))
  done
fi

# Disks: rxe-vm.sh names disk i (0-based, command-line order) by the serial
# npmu-disk-i; list their block devices in that order.
ndisks=$(cat "$run/ndisks" 2>/dev/null || echo 0)
disks=
if [ "$ndisks" -gt 0 ]; then
  modprobe virtio_blk || fail "modprobe virtio_blk"
  slot=0
  while [ "$slot" -lt "$ndisks" ]; do
    dev=; i=0
    while [ -z "$dev" ]; do
      for b in /sys/block/vd*; do
        [ "$(cat "$b/serial" 2>/dev/null)" = "npmu-disk-$slot" ] && [ -b "/dev/${b##*/}" ] && dev=/dev/${b##*/}
      done
      [ -n "$dev" ] && break
      i=$((i + 1)); [ $i -lt $tries ] || fail "no block device for disk $slot (serial npmu-disk-$slot)"
      sleep 0.05
    done
    disks="$disks${disks:+ }$dev"
    slot=$((slot + 1))
  done
fi

# Wait for the port to be ACTIVE and the IPv4-mapped GID (index 1, RoCEv2)
# to be in the table, which is what clients will use.
state=/sys/class/infiniband/rxe0/ports/1/state
gid=/sys/class/infiniband/rxe0/ports/1/gids/1
i=0
until grep -q ACTIVE "$state" 2>/dev/null && ! grep -q '^0000:0000:0000:0000:0000:0000:0000:0000$' "$gid" 2>/dev/null && [ -s "$gid" ]; do
  i=$((i + 1)); [ $i -lt $tries ] || fail "rxe0 did not become ACTIVE: $(cat "$state" 2>/dev/null)"
  sleep 0.05
done

export NPMU_RXE_DEV=rxe0 NPMU_RXE_ADDR=$rxe_addr NPMU_IN_VM=1 NPMU_DAX_DEVICES="$dax_devices" NPMU_DISKS="$disks"
bash "$run/cmd.sh" </dev/null >"$out" 2>"$err"
finish $?
