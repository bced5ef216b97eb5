#!/bin/bash
# Run a command inside a qemu micro-VM that has real soft-RoCE (rdma_rxe).
# The host kernel has no RDMA, so we boot Debian's stock kernel (TCG, no KVM)
# over the host's / shared read-only via 9p; the project directory is shared
# read-write at the same path. See /work/shared/notes/rxe-testbed.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/rxe-vm.sh [options] -- CMD [ARGS...]

Boot a micro-VM with soft-RoCE device rxe0, run CMD in it (as root, in the
current directory, stdin /dev/null), stream its stdout/stderr here and exit
with its exit status.

options:
  --nvdimm FILE:SIZE  add an emulated NVDIMM backed by host FILE (created
                      sparse if missing; SIZE like 256M, a multiple of 2M);
                      repeatable. The guest sees it as devdax, listed in
                      NPMU_DAX_DEVICES in the order given. Its devdax
                      namespace has 4 KiB alignment (recreated if not)
  --nvdimm-persistence cpu|mem-ctrl
                      the platform's persistence domain for the NVDIMMs (qemu
                      -machine nvdimm-persistence=): cpu = eADR, the guest's
                      region persistence_domain reads cpu_cache; mem-ctrl =
                      ADR, it reads memory_controller. Default: not set, the
                      guest has no persistence_domain (units report 'none')
  --disk FILE:SIZE    add a virtio-blk disk backed by the raw host FILE
                      (created sparse if missing; SIZE like 64M); repeatable.
                      cache=none (O_DIRECT on the host): what the guest
                      flushed (fsync/fdatasync) is in FILE, what it did not
                      is lost by kill -9 of qemu, as on a real disk. The
                      guest sees /dev/vdX, listed in NPMU_DISKS in the order
                      given
  --timeout SEC       kill the VM after SEC seconds, exit 124 (default 1800)
  --pidfile FILE      write qemu's pid to FILE (kill -9 it = power cut)
  --mem SIZE          guest RAM (default 2G)
  --cpus N            guest CPUs (default 2)
  --env NAME          pass host variable NAME into the guest; repeatable.
                      NPMU_* and CI are always passed
  -h, --help          this text

in the guest: NPMU_IN_VM=1 NPMU_RXE_DEV=rxe0 NPMU_RXE_ADDR=<veth0 IPv4>
              NPMU_DAX_DEVICES="/dev/daxN.0 ..." (empty without --nvdimm)
              NPMU_DISKS="/dev/vda ..." (empty without --disk)
exit status: CMD's; 124 timeout; 125 VM/set-up failure; 128+N if qemu died
             of signal N (e.g. 137 after kill -9)
EOF
}

die() { echo "rxe-vm: $*" >&2; exit 125; }

timeout=1800 mem=2G cpus=2 pidfile= persistence=
nvdimms=() disks=() pass_env=()
while (($#)); do
  case $1 in
    --nvdimm) [[ ${2:-} == ?*:?* ]] || die "--nvdimm needs FILE:SIZE"; nvdimms+=("$2"); shift 2 ;;
    --disk) [[ ${2:-} == ?*:?* ]] || die "--disk needs FILE:SIZE"; disks+=("$2"); shift 2 ;;
    --nvdimm-persistence)
      [[ ${2:-} == cpu || ${2:-} == mem-ctrl ]] || die "--nvdimm-persistence needs cpu or mem-ctrl"
      persistence=$2; shift 2 ;;
    --timeout) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--timeout needs seconds"; timeout=$2; shift 2 ;;
    --pidfile) [[ -n ${2:-} ]] || die "--pidfile needs a file"; pidfile=$2; shift 2 ;;
    --mem) [[ -n ${2:-} ]] || die "--mem needs a size"; mem=$2; shift 2 ;;
    --cpus) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--cpus needs a number"; cpus=$2; shift 2 ;;
    --env) [[ ${2:-} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env needs a variable name"; pass_env+=("$2"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) break ;;
  esac
done
(($#)) || { usage >&2; die "no command given"; }
[[ -z $persistence || ${#nvdimms[@]} -gt 0 ]] || die "--nvdimm-persistence needs at least one --nvdimm"

proj=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cache=$proj/.cache/vm
qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found (run scripts/setup-rxe.sh)"
kernel=$(printf '%s\n' /boot/vmlinuz-* | sort -V | tail -n 1)
[[ -r $kernel ]] || die "no kernel in /boot (run scripts/setup-rxe.sh)"
kver=${kernel#/boot/vmlinuz-}

# The initramfs is rebuilt when the kernel or its builder scripts change.
key=$(cat "$proj/scripts/vm/build-initramfs.sh" "$proj/scripts/vm/initramfs-init.sh" | sha256sum)
initrd=$cache/initramfs-$kver-${key:0:12}.cpio.gz
mkdir -p "$cache/runs"
if [[ ! -s $initrd ]]; then
  for old in "$cache"/initramfs-*.cpio.gz; do
    [[ $old == "$initrd" ]] || rm -f "$old"
  done
  bash "$proj/scripts/vm/build-initramfs.sh" "$kver" "$initrd" || die "initramfs build failed"
fi

# qemu option values escape ',' by doubling it.
q() { printf '%s' "${1//,/,,}"; }
to_mib() { local b; b=$(numfmt --from=iec "$1" 2>/dev/null) || die "bad size '$1'"; echo $((b / 1048576)); }

mem_mib=$(to_mib "$mem")
machine=(-machine pc -m "${mem_mib}M")
devices=()
if ((${#nvdimms[@]})); then
  total=0 i=0
  for spec in "${nvdimms[@]}"; do
    file=${spec%:*} size=${spec##*:}
    mib=$(to_mib "$size")
    ((mib > 0 && mib % 2 == 0)) || die "NVDIMM size $size must be a multiple of 2M (devdax alignment)"
    if [[ ! -e $file ]]; then
      truncate -s "${mib}M" "$file" || die "cannot create $file"
    fi
    have=$(stat -c %s "$file")
    ((have == mib * 1048576)) || die "$file is $have bytes, not $size (use a new file or the same size)"
    file=$(realpath "$file")
    # Slots are given explicitly so the guest can map NFIT handles (slot+1)
    # back to the order of the --nvdimm options.
    devices+=(-object "memory-backend-file,id=nvmem$i,share=on,mem-path=$(q "$file"),size=${mib}M"
      -device "nvdimm,id=nv$i,memdev=nvmem$i,slot=$i")
    total=$((total + mib)) i=$((i + 1))
  done
  # The NVDIMMs live in the hot-plug area; leave 1 GiB of slack for alignment.
  # shellcheck disable=SC2054 # commas belong to qemu's option syntax
  machine=(-machine "pc,nvdimm=on${persistence:+,nvdimm-persistence=$persistence}" -m "${mem_mib}M,slots=${#nvdimms[@]},maxmem=$((mem_mib + total + 1024))M")
fi

# Disks: virtio-blk with a serial naming its place on the command line, so
# the guest can list them in order whatever names the kernel gives them.
# cache=none is O_DIRECT on the host (no host page cache between the guest and
# FILE) with the guest's flushes passed down: a kill -9 of qemu loses exactly
# what the guest had not flushed.
i=0
for spec in "${disks[@]}"; do
  file=${spec%:*} size=${spec##*:}
  mib=$(to_mib "$size")
  ((mib > 0)) || die "disk size $size must be at least 1M"
  if [[ ! -e $file ]]; then
    truncate -s "${mib}M" "$file" || die "cannot create $file"
  fi
  have=$(stat -c %s "$file")
  ((have == mib * 1048576)) || die "$file is $have bytes, not $size (use a new file or the same size)"
  file=$(realpath "$file")
  devices+=(-drive "file=$(q "$file"),if=none,id=disk$i,format=raw,cache=none,aio=threads"
    -device "virtio-blk-pci,drive=disk$i,serial=npmu-disk-$i")
  i=$((i + 1))
done

# Run directories left by a killed rxe-vm.sh are pruned after two days.
find "$cache/runs" -mindepth 1 -maxdepth 1 -mmin +2880 -exec rm -rf {} + 2>/dev/null || true
run=$(mktemp -d "$cache/runs/XXXXXXXX")
qpid="" qemu_pid="" spid="" readers=()
stop_qemu() { # by pid only: never by name, other VMs may be running
  [[ -n $qpid ]] || return 0
  if kill -0 "$qpid" 2>/dev/null; then
    kill "$qpid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$qpid" 2>/dev/null || true
  fi
  wait "$qpid" 2>/dev/null || true
  qpid=""
}
drain_output() { # once qemu is gone, the FIFOs' writers are closed
  # A reader may still block in open() if qemu never opened its FIFO: opening
  # the FIFO read-write (never blocks) and closing it releases that reader.
  local f fd
  for f in "$run/out" "$run/err"; do
    [[ -p $f ]] && { exec {fd}<>"$f"; exec {fd}>&-; }
  done
  ((${#readers[@]} == 0)) || wait "${readers[@]}" 2>/dev/null || true
  readers=()
}
# shellcheck disable=SC2317 # invoked by the traps
cleanup() {
  local st=$?
  trap - EXIT INT TERM
  if [[ -n $spid ]]; then kill "$spid" 2>/dev/null || true; fi
  stop_qemu
  drain_output
  if [[ -n $pidfile && $(cat "$pidfile" 2>/dev/null) == "$qemu_pid" ]]; then rm -f "$pidfile"; fi
  rm -rf "$run"
  exit "$st"
}
trap cleanup EXIT
trap 'echo "rxe-vm: interrupted" >&2; exit 130' INT
trap 'echo "rxe-vm: terminated" >&2; exit 143' TERM

# The command, its environment and cwd, as a bash script the guest runs.
{
  echo '# generated by rxe-vm.sh'
  while read -r name; do
    case $name in
      NPMU_IN_VM | NPMU_RXE_DEV | NPMU_RXE_ADDR | NPMU_DAX_DEVICES | NPMU_DISKS) ;; # set by the guest
      NPMU_* | CI) printf 'export %s=%q\n' "$name" "${!name}" ;;
    esac
  done < <(compgen -e)
  for name in "${pass_env[@]}"; do
    [[ -n ${!name+set} ]] && printf 'export %s=%q\n' "$name" "${!name}"
  done
  # Host PATH first (same file system), system dirs after. HOME is read-only
  # in the guest, so caches go to the guest's tmpfs.
  path=$PATH
  for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
    [[ :$path: == *:$d:* ]] || path=$path:$d
  done
  printf 'export PATH=%q\n' "${path#:}"
  printf 'export HOME=%q\n' "${HOME:-/root}"
  echo 'export XDG_CACHE_HOME=/tmp/.cache npm_config_cache=/tmp/.npm'
  printf 'want=%q proj=%q\n' "$PWD" "$proj"
  # A cwd under the host's /tmp (not in the project) is hidden by the guest's tmpfs.
  # shellcheck disable=SC2016 # expanded in the guest
  echo 'cd -- "$want" 2>/dev/null || { echo "rxe-vm: $want is not visible in the guest, running in $proj" >&2; cd -- "$proj"; }'
  echo 'unset want proj'
  printf 'exec'; printf ' %q' "$@"; echo
} >"$run/cmd.sh"
echo "${#nvdimms[@]}" >"$run/ndimms"
echo "${#disks[@]}" >"$run/ndisks"

# The command's stdout/stderr come back over two virtio-serial ports into
# FIFOs: binary-clean, flow-controlled (nothing is dropped at power-off, as a
# guest write returns only once qemu has passed the data on), and separate
# from the kernel console, which goes to a log shown only on failure.
# If our own stdout goes away (`| head`), keep draining: a FIFO without a
# reader makes qemu spin and the guest stall.
mkfifo "$run/out" "$run/err"
{ cat || cat >/dev/null; } <"$run/out" & readers+=($!)
{ cat >&2 || cat >/dev/null; } <"$run/err" & readers+=($!)

cmdline="console=ttyS0 quiet loglevel=0 panic=-1 npmu_proj=$(printf '%s' "$proj" | base64 -w0) npmu_run=${run##*/}"
"$qemu" -nodefaults -no-user-config -display none -no-reboot -nic none \
  -accel tcg,thread=multi -cpu max -smp "$cpus" "${machine[@]}" \
  -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
  -chardev "file,id=con,path=$(q "$run/console.log")" -serial chardev:con \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$(q "$proj"),mount_tag=npmuproj,security_model=none,multidevs=remap" \
  -device virtio-serial-pci \
  -chardev "file,id=out,path=$(q "$run/out")" -device virtserialport,chardev=out,name=npmu.stdout \
  -chardev "file,id=err,path=$(q "$run/err")" -device virtserialport,chardev=err,name=npmu.stderr \
  "${devices[@]}" </dev/null >"$run/qemu.log" 2>&1 &
qpid=$! qemu_pid=$!
[[ -z $pidfile ]] || echo "$qpid" >"$pidfile"

sleep "$timeout" & spid=$!
done_pid=
# (2>/dev/null: no "Killed" job notice from bash after a kill -9 power cut)
wait -n -p done_pid "$qpid" "$spid" 2>/dev/null && qst=0 || qst=$?
if [[ $done_pid == "$spid" ]]; then
  spid=""
  stop_qemu
  drain_output
  echo "rxe-vm: timeout after $timeout s" >&2
  exit 124
fi
kill "$spid" 2>/dev/null || true
spid="" qpid=""
drain_output

if [[ -s $run/failed ]]; then
  echo "rxe-vm: VM set-up failed: $(cat "$run/failed")" >&2
  tail -n 30 "$run/console.log" >&2 2>/dev/null || true
  exit 125
fi
if [[ -s $run/rc ]]; then
  exit "$(cat "$run/rc")"
fi
if ((qst > 128)); then
  echo "rxe-vm: qemu died of signal $((qst - 128)) before the command finished" >&2
  exit "$qst"
fi
echo "rxe-vm: the VM stopped without reporting the command's exit status (qemu status $qst)" >&2
tail -n 30 "$run/qemu.log" "$run/console.log" >&2 2>/dev/null || true
exit 125
