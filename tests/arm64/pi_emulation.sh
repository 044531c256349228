#!/usr/bin/env bash
# Prove that the base edge-pneumo package runs on a 64-bit Raspberry Pi
# (Debian bookworm arm64, Python 3.11) by running it under qemu-user emulation,
# and that it gives the same answers as the host.
#
# What it does (as root, on a Debian/Ubuntu x86_64 host):
#   1. host tools: qemu-user-static, binfmt-support, debootstrap; binfmt_misc on
#   2. a bookworm arm64 minbase rootfs, cached OUTSIDE the repo (stamp files)
#   3. python3 + python3-venv + ca-certificates inside it
#   4. QEMU_CPU=cortex-a72 (the Pi 4's core) and a matching fake /proc/cpuinfo
#   5. the project's wheel, built from this checkout, installed with the
#      [tflite,serve,dicom] extras into a fresh arm64 venv; TensorFlow must be absent
#   6. `edge-pneumo verify` (the package's self-check), then `edge-pneumo infer`
#      on N real test X-rays for the int8 ONNX, float32 ONNX
#      and int8 TFLite artifacts, inside the emulated system
#   7. the same command on the host
#   8. per image: same status and label; |dp| of the raw probability <= 1e-4 (float32)
#      or <= 1/255 (int8)
#   9. one Grad-CAM heatmap per int8 artifact on the emulated Pi and on the host: the same map
#      within int8 tolerance; `edge-pneumo serve` (the serve extra) answers /healthz on the Pi
#  10. the dicom extra: one test X-ray wrapped as a CR DICOM, classified on the Pi and answered with
#      a DICOM SR (highdicom), which the host's DCMTK `dsrdump` reads when it is installed
#  11. `edge-pneumo calibrate` on a small site folder (20 NORMAL + 20 PNEUMONIA train/ images) on the
#      Pi and on the host (int8 TFLite), then `infer --site` on the Pi: the same counts, thresholds
#      within int8 tolerance, and every row carries the site file's hash
#  12. the second tier by name: `infer --model small` on one NORMAL and one PNEUMONIA test image on
#      the Pi (the wheel's exported/small/) and on the host (the checkout's), the same artifact: the
#      same labels, |dp| within its tolerance. Skipped, and said so, while the checkout has no
#      exported/small/manifest.json
#
# Usage:  sudo tests/arm64/pi_emulation.sh [--summary FILE.json]
#         sudo tests/arm64/pi_emulation.sh --prepare   # only build/refresh the cached rootfs
# Env:
#   EDGE_PNEUMO_PI_CACHE     rootfs cache     (default ~/.cache/edge-pneumo/pi-rootfs)
#   EDGE_PNEUMO_PI_FRESH=1   delete the cached rootfs first
#   EDGE_PNEUMO_PI_IMAGES    number of images (default 40, half of each class)
#   EDGE_PNEUMO_PI_SUMMARY   where to write the JSON summary (same as --summary; default
#                            <cache>/last-run.json, per-image results in <summary>-results/)
#   EDGE_PNEUMO_PI_KEEP=1    keep the scratch directory (images, outputs)
#   EDGE_PNEUMO_DATA         dataset root     (default <repo>/../shared/data/chest_xray)
#   EDGE_PNEUMO_HOST_BIN     host edge-pneumo executable, or the bin/ directory
#                            holding edge-pneumo and python (default: edge-pneumo on PATH)
#   QEMU_CPU                 emulated CPU (default cortex-a72 = Pi 4; cortex-a76 ~ Pi 5;
#                            cortex-a53 = Pi 3 / Zero 2 W)
#   MIRROR, SECURITY_MIRROR  Debian mirrors (default: taken from the host's apt sources)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${EDGE_PNEUMO_PI_CACHE:-$HOME/.cache/edge-pneumo/pi-rootfs}
ROOTFS=$CACHE/rootfs
STAMPS=$CACHE/stamps
DATA=${EDGE_PNEUMO_DATA:-$REPO/../shared/data/chest_xray}
N_IMAGES=${EDGE_PNEUMO_PI_IMAGES:-40}
SUMMARY=${EDGE_PNEUMO_PI_SUMMARY:-}
PREPARE_ONLY=0
SUITE=bookworm
ARM_VENV=/opt/edge-pneumo-venv           # inside the rootfs, recreated every run
export QEMU_CPU=${QEMU_CPU:-cortex-a72}

while (($#)); do
  case $1 in
    --summary) SUMMARY=$2; shift 2 ;;
    --prepare) PREPARE_ONLY=1; shift ;;
    --summary=*) SUMMARY=${1#*=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done

log()  { printf '\n=== %s\n' "$*"; }
die()  { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[[ -z $SUMMARY ]] || SUMMARY=$(realpath -m "$SUMMARY")
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mounts)"
[[ $N_IMAGES =~ ^[0-9]+$ && $N_IMAGES -ge 2 ]] || die "EDGE_PNEUMO_PI_IMAGES must be an integer >= 2"

# ------------------------------------------------------------------ helpers
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/edge-pneumo-pi.XXXXXX")
TIMINGS=$SCRATCH/timings.tsv
: > "$TIMINGS"
T_START=$(date +%s.%N)

phase() {  # phase NAME CMD... : run CMD, record its wall time under NAME
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  log "[$name]"
  "$@"
  local dt; dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\n' "$name" "$dt" >> "$TIMINGS"
  echo "--- $name: ${dt} s"
}

mounts_under_rootfs() {  # mount points below the rootfs, innermost (latest) first
  awk -v r="$ROOTFS/" 'index($2, r) == 1 { print $2 }' /proc/mounts | tac
}

unmount_rootfs() {
  local m
  for m in $(mounts_under_rootfs); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

cleanup() {
  local rc=$?
  unmount_rootfs || true
  if [[ ${EDGE_PNEUMO_PI_KEEP:-0} == 1 ]]; then
    echo "scratch kept: $SCRATCH"
  elif mounts_under_rootfs | grep -q .; then
    echo "WARNING: still mounted under $ROOTFS; leaving $SCRATCH in place" >&2
  else
    rm -rf "$SCRATCH"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run a command inside the arm64 rootfs with a clean, explicit environment.
CHROOT_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
            LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" DEBIAN_FRONTEND=noninteractive
            PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
            PIP_DEFAULT_TIMEOUT=120 PIP_NO_INPUT=1)
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [[ -n ${!v:-} ]] && CHROOT_ENV+=("$v=${!v}")
done
# A host index over http(s) is reachable from the chroot too; file:// ones are not.
[[ ${PIP_INDEX_URL:-} == http* ]] && CHROOT_ENV+=("PIP_INDEX_URL=$PIP_INDEX_URL")
in_pi() { chroot "$ROOTFS" /usr/bin/env -i "${CHROOT_ENV[@]}" "$@"; }

# Host edge-pneumo and the python beside it (its venv builds the wheel and compares).
resolve_host() {
  local bin=${EDGE_PNEUMO_HOST_BIN:-edge-pneumo}
  if [[ -d $bin ]]; then HOST_EP=$bin/edge-pneumo; else HOST_EP=$(command -v "$bin" || true); fi
  [[ -n $HOST_EP && -x $HOST_EP ]] || die "host edge-pneumo not found ('$bin'); set EDGE_PNEUMO_HOST_BIN"
  HOST_PY=$(dirname "$HOST_EP")/python
  [[ -x $HOST_PY ]] || HOST_PY=$(command -v python3) || die "no host python3"
  echo "host: $HOST_EP (python $HOST_PY)"
}

debian_mirror() {  # first host apt URI whose path ends in /$1
  { grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -E 's/\[[^]]*\]//' | awk '{ print $2 }'
    grep -hE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | sed -E 's/^[[:space:]]*URIs:[[:space:]]*//' | tr ' ' '\n'
  } | sed 's:/*$::' | grep -E "/$1\$" | head -n1 || true
}
MIRROR=${MIRROR:-$(debian_mirror debian)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(debian_mirror debian-security)}
SECURITY_MIRROR=${SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

# ------------------------------------------------------------------ 1. host tools
host_tools() {
  local missing=()
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v update-binfmts      >/dev/null || missing+=(binfmt-support)
  command -v debootstrap         >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # Containers and systemd-less VMs often have binfmt_misc unmounted.
  [[ -e /proc/sys/fs/binfmt_misc/register ]] \
    || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc (unprivileged container?)"
  update-binfmts --enable qemu-aarch64 || true
  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
  grep -qx enabled "$entry" 2>/dev/null || die "binfmt handler qemu-aarch64 is not enabled"
  echo "binfmt: $(tr '\n' ' ' < "$entry" | cut -c1-90)"
}

# ------------------------------------------------------------------ 2. rootfs
build_rootfs() {
  unmount_rootfs
  mounts_under_rootfs | grep -q . && die "something is still mounted under $ROOTFS"
  rm -rf --one-file-system "$ROOTFS" "$STAMPS"
  mkdir -p "$STAMPS"
  debootstrap --arch=arm64 --foreign --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR"
  # Without the binfmt 'F' flag the interpreter must exist inside the chroot.
  local interp
  interp=$(awk '$1 == "interpreter" { print $2 }' /proc/sys/fs/binfmt_misc/qemu-aarch64)
  if ! grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    mkdir -p "$ROOTFS$(dirname "$interp")"
    cp -L "$interp" "$ROOTFS$interp"
  fi
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage
  touch "$STAMPS/debootstrap"
}

fake_cpuinfo() {
  # qemu-user passes the host's x86 /proc/cpuinfo through; the cpuinfo library
  # inside onnxruntime (MLAS) and LiteRT (XNNPACK) then segfaults. Serve what the
  # Pi with the emulated core reports, one block per host core.
  local part features model i f=$CACHE/cpuinfo.arm64
  case $QEMU_CPU in
    cortex-a53) part=0xd03 features='fp asimd evtstrm crc32 cpuid'
                model='Raspberry Pi 3 Model B Rev 1.2' ;;
    cortex-a76) part=0xd0b features='fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp'
                model='Raspberry Pi 5 Model B Rev 1.0' ;;
    *)          part=0xd08 features='fp asimd evtstrm crc32 cpuid'
                model='Raspberry Pi 4 Model B Rev 1.1' ;;
  esac
  for ((i = 0; i < $(nproc); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\n' "$i" "$features"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' "$part"
  done > "$f"
  printf 'Model\t\t: %s (qemu-user, QEMU_CPU=%s)\n' "$model" "$QEMU_CPU" >> "$f"
}

sync_host_cas() {
  # Extra CAs the host trusts (e.g. a TLS-inspecting proxy): pip in the chroot
  # needs them too. update-ca-certificates takes ~1 min under emulation, so only
  # run it when a certificate changed (before apt, ca-certificates' postinst does it).
  compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null || return 0
  local f dest=$ROOTFS/usr/local/share/ca-certificates changed=0
  mkdir -p "$dest"
  for f in /usr/local/share/ca-certificates/*.crt; do
    cmp -s "$f" "$dest/${f##*/}" || { cp "$f" "$dest/"; changed=1; }
  done
  if ((changed)) && [[ -x $ROOTFS/usr/sbin/update-ca-certificates ]]; then
    in_pi update-ca-certificates > /dev/null
  fi
}

mount_rootfs() {
  unmount_rootfs   # leftovers of a killed run
  fake_cpuinfo
  mount -t proc proc "$ROOTFS/proc"
  mount --bind "$CACHE/cpuinfo.arm64" "$ROOTFS/proc/cpuinfo"
  mount --bind /sys "$ROOTFS/sys"
  mount --bind /dev "$ROOTFS/dev"
  mount --bind /dev/pts "$ROOTFS/dev/pts"
  mkdir -p "$ROOTFS/work"
  mount --bind "$SCRATCH/work" "$ROOTFS/work"
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  sync_host_cas
  [[ $(in_pi uname -m) == aarch64 ]] || die "the rootfs does not run as aarch64"
}

# ------------------------------------------------------------------ 3. apt in the rootfs
pi_apt() {
  cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
  echo force-unsafe-io > "$ROOTFS/etc/dpkg/dpkg.cfg.d/unsafe-io"   # fewer fsyncs under emulation
  in_pi apt-get update -qq
  in_pi apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates
  in_pi apt-get clean
  rm -rf "${ROOTFS:?}"/var/lib/apt/lists/*   # 80 MB; the stamp means apt never runs here again
  touch "$STAMPS/apt"
}

# ------------------------------------------------------------------ 5. wheel + fresh venv
build_wheel() {
  # Build from a copy of the tracked + untracked-but-not-ignored files, so the
  # checkout gets no build/ or *.egg-info litter.
  local src=$SCRATCH/src
  mkdir -p "$src" "$SCRATCH/work/dist"
  if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    # ... minus any virtualenv that lives in the checkout without being ignored.
    local venvs
    venvs=$(cd "$REPO" && find . -maxdepth 3 -name pyvenv.cfg -printf '%h\n' | sed 's:^\./::' | paste -sd'|')
    git -C "$REPO" ls-files -z --cached --others --exclude-standard \
      | { if [[ -n $venvs ]]; then grep -zvE "^($venvs)/"; else cat; fi; } \
      | tar -C "$REPO" --null --ignore-failed-read -T - -cf - | tar -C "$src" -xf -
  else
    cp -a "$REPO/." "$src/"
  fi
  "$HOST_PY" -m pip wheel -q --no-deps -w "$SCRATCH/work/dist" "$src" > "$SCRATCH/wheel_build.log" 2>&1 \
    || { cat "$SCRATCH/wheel_build.log"; die "could not build the wheel"; }
  WHEEL=$(cd "$SCRATCH/work/dist" && ls edge_pneumo-*.whl)
  [[ $(wc -w <<< "$WHEEL") == 1 ]] || die "expected one wheel, got: $WHEEL"
  echo "wheel: $WHEEL ($(du -h "$SCRATCH/work/dist/$WHEEL" | cut -f1))"
}

fetch_wheels() {
  # Resolving against PyPI is the slow part of pip under emulation (minutes of
  # index parsing in emulated Python), so the host's pip downloads the arm64
  # wheels natively, for the rootfs's Python and glibc; the arm64 pip then
  # resolves again, offline, against exactly those files.
  local py glibc plat=() i
  read -r py glibc < <(in_pi python3 -c \
    'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.libc_ver()[1])')
  for ((i = ${glibc#2.}; i >= 17; i--)); do plat+=(--platform "manylinux_2_${i}_aarch64"); done
  plat+=(--platform manylinux2014_aarch64 --platform linux_aarch64)
  echo "arm64 target: python $py, glibc $glibc"
  mkdir -p "$SCRATCH/work/wheels"
  "$HOST_PY" -m pip download -q --cache-dir "$CACHE/pip" --only-binary=:all: "${plat[@]}" \
    --python-version "$py" --implementation cp --abi "cp${py/./}" \
    -d "$SCRATCH/work/wheels" "$SCRATCH/work/dist/${WHEEL}[tflite,serve,dicom]"
  echo "$(find "$SCRATCH/work/wheels" -name "*.whl" | wc -l) wheels, $(du -sh "$SCRATCH/work/wheels" | cut -f1)"
}

pi_venv() {
  # No pip inside: ensurepip costs ~1 min under emulation. Debian's own pip
  # wheel (the one ensurepip would install) runs from outside instead.
  rm -rf --one-file-system "${ROOTFS:?}$ARM_VENV"
  in_pi python3 -m venv --without-pip "$ARM_VENV"
}

pi_pip_install() {
  # Binary wheels only: a Pi must not need a compiler. --no-compile: byte-
  # compiling every installed file under emulation is slow; imports do it lazily.
  local whls=("$ROOTFS"/usr/share/python-wheels/pip-*.whl)
  [[ -f ${whls[-1]} ]] || die "no pip wheel in the rootfs (python3-venv missing?)"
  local pip=("$ARM_VENV/bin/python" "${whls[-1]#"$ROOTFS"}/pip" install --no-compile --only-binary=:all:)
  if ! in_pi "${pip[@]}" --no-index --find-links /work/wheels "/work/dist/${WHEEL}[tflite,serve,dicom]"; then
    echo "offline install from the host-fetched wheels failed; retrying against the index"
    in_pi "${pip[@]}" --find-links /work/wheels "/work/dist/${WHEEL}[tflite,serve,dicom]"
  fi
}

pi_check() {
  # Platform, versions, and: TensorFlow must NOT be importable.
  cat > "$SCRATCH/work/pi_info.py" <<'EOF'
import importlib.metadata as md, json, platform, sys
info = {"machine": platform.machine(), "python": platform.python_version(),
        "versions": {}, "packages": sorted(f"{d.metadata['Name']}=={d.version}" for d in md.distributions())}
for dist in ("edge-pneumo", "numpy", "opencv-python-headless", "onnxruntime", "ai-edge-litert", "typer", "simplejpeg",
             "starlette", "uvicorn"):
    try:
        info["versions"][dist] = md.version(dist)
    except md.PackageNotFoundError:
        info["versions"][dist] = None
try:
    import tensorflow  # noqa: F401
    info["tensorflow_importable"] = True
except ImportError:
    info["tensorflow_importable"] = False
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(f"machine {info['machine']}, python {info['python']}, tensorflow importable: {info['tensorflow_importable']}")
for k, v in info["versions"].items():
    print(f"  {k:24s} {v}")
EOF
  in_pi "$ARM_VENV/bin/python" /work/pi_info.py /work/pi_info.json
  "$HOST_PY" - "$SCRATCH/work/pi_info.json" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
problems = []
if info["machine"] != "aarch64": problems.append(f"machine is {info['machine']}, not aarch64")
if not info["python"].startswith("3.11."): problems.append(f"python is {info['python']}, not 3.11")
if info["tensorflow_importable"]: problems.append("tensorflow is importable: the base install must not pull it in")
missing = [k for k, v in info["versions"].items() if v is None]
if missing: problems.append(f"not installed: {missing}")
if any(p.lower().startswith(("tensorflow", "keras")) for p in info["packages"]):
    problems.append("tensorflow/keras distribution installed")
sys.exit("\n".join(problems) or None)
EOF
}

# ------------------------------------------------------------------ 6/7. images + inference
stage_images() {
  local half=$((N_IMAGES / 2)) cls n dir
  mkdir -p "$SCRATCH/work/images"
  for cls in NORMAL PNEUMONIA; do
    n=$half; [[ $cls == PNEUMONIA ]] && n=$((N_IMAGES - half))
    dir=$DATA/test/$cls
    [[ -d $dir ]] || die "no test images in $dir (set EDGE_PNEUMO_DATA)"
    local files=()
    mapfile -t files < <(find "$dir" -maxdepth 1 -type f \( -iname '*.jpeg' -o -iname '*.jpg' -o -iname '*.png' \) \
                           -printf '%f\n' | LC_ALL=C sort | head -n "$n")
    ((${#files[@]} == n)) || die "wanted $n images in $dir, found ${#files[@]}"
    local f
    for f in "${files[@]}"; do cp "$dir/$f" "$SCRATCH/work/images/"; done
  done
  local got; got=$(find "$SCRATCH/work/images" -type f | wc -l)
  ((got == N_IMAGES)) || die "file name clash between classes: $got of $N_IMAGES images staged"
  echo "$N_IMAGES images ($half NORMAL, $((N_IMAGES - half)) PNEUMONIA) from $DATA/test"
}

select_artifacts() {
  # name <TAB> file <TAB> format <TAB> precision, for int8 ONNX, float32 ONNX, int8 TFLite.
  [[ -f $REPO/exported/manifest.json ]] || die "no exported/manifest.json in $REPO"
  "$HOST_PY" - "$REPO/exported/manifest.json" > "$SCRATCH/artifacts.tsv" <<'EOF'
import json, sys
arts = json.load(open(sys.argv[1]))["artifacts"]
fmt_of = lambda a: a.get("format") or a.get("runtime")   # the manifest calls it "runtime"
for fmt, prec in (("onnx", "int8"), ("onnx", "float32"), ("tflite", "int8")):
    hits = [a for a in arts if fmt_of(a) == fmt and a.get("precision") == prec]
    if not hits:
        sys.exit(f"manifest has no {prec} {fmt} artifact")
    a = hits[0]
    print(f"{a.get('name') or fmt + '_' + prec}\t{a['file']}\t{fmt}\t{prec}\t{a.get('sha256', '')}")
EOF
  cat "$SCRATCH/artifacts.tsv"
}

check_bundled() {
  # The arm64 run uses the artifacts inside the installed wheel: they must be
  # byte-identical to the checkout's (which the host run uses).
  local site name file sha
  site=$(in_pi "$ARM_VENV/bin/python" -c \
    'import importlib.util as u; print(u.find_spec("edge_pneumo").submodule_search_locations[0])')
  PI_EXPORTED=$site/exported
  while IFS=$'\t' read -r name file _ _ sha; do
    [[ -f $ROOTFS$PI_EXPORTED/$file ]] || die "the wheel does not ship exported/$file"
    cmp -s "$ROOTFS$PI_EXPORTED/$file" "$REPO/exported/$file" || die "wheel's $file differs from exported/$file"
    if [[ -n $sha ]]; then
      [[ $(sha256sum < "$REPO/exported/$file" | cut -d' ' -f1) == "$sha" ]] \
        || die "exported/$file does not match its manifest sha256"
    fi
  done < "$SCRATCH/artifacts.tsv"
  echo "bundled artifacts in $PI_EXPORTED match exported/"
}

check_artifacts() { select_artifacts; check_bundled; }

record_rc() {  # record_rc SIDE NAME CMD... : run CMD, log its exit code, keep going
  local side=$1 name=$2 rc=0; shift 2
  "$@" || rc=$?
  printf '%s\t%s\t%s\n' "$side" "$name" "$rc" >> "$SCRATCH/infer_rc.tsv"
  ((rc == 0)) || echo "!!! $side infer for $name failed with exit code $rc"
}

pi_verify() {
  # The package's own device self-check (fixed synthetic inputs, outputs recorded
  # at export time) on the wheel's shipped artifacts. Judged in compare.
  local rc=0
  in_pi "$ARM_VENV/bin/edge-pneumo" verify "$PI_EXPORTED" --json --runs 3 > "$SCRATCH/work/pi_verify.json" || rc=$?
  echo "$rc" > "$SCRATCH/verify_rc"
  echo "edge-pneumo verify exited $rc"
}

infer_pi() {  # infer_pi NAME FILE
  in_pi "$ARM_VENV/bin/edge-pneumo" infer --model "$PI_EXPORTED/$2" --dir /work/images \
    --format json --output "/work/out_$1.jsonl"
}

infer_host() {  # infer_host NAME FILE
  mkdir -p "$SCRATCH/host"
  "$HOST_EP" infer --model "$REPO/exported/$2" --dir "$SCRATCH/work/images" \
    --format json --output "$SCRATCH/host/out_$1.jsonl"
}

heatmaps() {  # the Grad-CAM map of one image, per int8 artifact, on the Pi and on the host
  cat > "$SCRATCH/work/heatmap.py" <<'EOF'
import sys
import numpy as np
from edge_pneumo import Classifier
folder, artifact, image, out = sys.argv[1:5]
r = Classifier.load(folder, artifact=artifact).explain(image)
np.save(out, r.heatmap)
print(f"{artifact}: {r.status} {r.label} heatmap {r.heatmap.shape} max {float(r.heatmap.max()):.3f}")
EOF
  local img name file prec
  img=$(find "$SCRATCH/work/images" -type f -name '*.jpeg' | LC_ALL=C sort | tail -n1)
  mkdir -p "$SCRATCH/host"
  while IFS=$'\t' read -r name file _ prec _; do
    [[ $prec == int8 ]] || continue
    in_pi "$ARM_VENV/bin/python" /work/heatmap.py "$PI_EXPORTED" "$name" "/work/images/${img##*/}" "/work/heatmap_$name.npy"
    "$HOST_PY" "$SCRATCH/work/heatmap.py" "$REPO/exported" "$name" "$img" "$SCRATCH/host/heatmap_$name.npy"
  done < "$SCRATCH/artifacts.tsv"
  # and the CLI's PNG overlay, on the Pi
  in_pi "$ARM_VENV/bin/edge-pneumo" infer --model "$PI_EXPORTED" --heatmap /work/heatmap_png "/work/images/${img##*/}" > /dev/null
  ls "$SCRATCH/work/heatmap_png"
}

serve_check() {  # the serve extra on the Pi: start it, ask /healthz from the host (same network namespace)
  local port=18765 rc=1 i pid
  in_pi "$ARM_VENV/bin/edge-pneumo" serve --model "$PI_EXPORTED" --port "$port" > "$SCRATCH/work/pi_serve.log" 2>&1 &
  pid=$!
  for ((i = 0; i < 300; i++)); do
    if "$HOST_PY" -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=2).read().decode())" \
        > "$SCRATCH/work/pi_healthz.json" 2>/dev/null; then rc=0; break; fi
    sleep 1
  done
  pkill -f "serve --model $PI_EXPORTED --port $port" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$rc" > "$SCRATCH/serve_rc"
  echo "serve on arm64: /healthz $([[ $rc == 0 ]] && cat "$SCRATCH/work/pi_healthz.json" || echo 'did not answer')"
}

sr_check() {  # the dicom extra on the Pi: a CR film from a test JPEG, classified, answered with one SR
  local img rc=0
  img=$(find "$SCRATCH/work/images" -type f -name '*.jpeg' | LC_ALL=C sort | head -n1)
  cat > "$SCRATCH/work/pi_sr.py" <<'EOF'
import json, sys
import cv2
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid
from edge_pneumo import Classifier
from edge_pneumo.apps.sr_report import ReportContext, build_sr

model, jpeg, out = sys.argv[1:4]
grey = cv2.imread(jpeg, cv2.IMREAD_GRAYSCALE)
meta = FileMetaDataset()
meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
meta.TransferSyntaxUID = JPEGBaseline8Bit
ds = FileDataset("cr.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID, ds.PatientName = generate_uid(), generate_uid(), "PI", "PI^TEST"
ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
ds.Rows, ds.Columns = grey.shape
ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = 1, "MONOCHROME2", 8, 8
ds.HighBit, ds.PixelRepresentation = 7, 0
ds.PixelData = encapsulate([cv2.imencode(".jpg", grey)[1].tobytes()])
ds["PixelData"].VR = "OB"
ds.save_as(out + ".cr.dcm", enforce_file_format=True)
clf = Classifier.load(model)
row = clf.predict_bytes(open(out + ".cr.dcm", "rb").read(), name="cr").to_dict()
sr = build_sr(ds, row, ReportContext.from_classifier(clf))
sr.save_as(out, enforce_file_format=True)
print(json.dumps({"status": row["status"], "label": row["label"], "sr_sop_instance_uid": str(sr.SOPInstanceUID)}))
EOF
  in_pi "$ARM_VENV/bin/python" /work/pi_sr.py "$PI_EXPORTED" "/work/images/${img##*/}" /work/pi_sr.dcm \
    > "$SCRATCH/work/pi_sr.json" || rc=$?
  if ((rc == 0)) && command -v dsrdump > /dev/null; then
    dsrdump "$SCRATCH/work/pi_sr.dcm" > "$SCRATCH/work/pi_sr.txt" || rc=$?
  fi
  echo "$rc" > "$SCRATCH/sr_rc"
  echo "SR on arm64: rc $rc $(cat "$SCRATCH/work/pi_sr.json" 2>/dev/null)"
}

site_check() {  # calibrate a small site on the Pi and on the host, then infer --site on the Pi
  local cls f rc=0
  for cls in NORMAL PNEUMONIA; do
    mkdir -p "$SCRATCH/work/site/$cls"
    [[ -d $DATA/train/$cls ]] || die "no train images in $DATA/train/$cls (set EDGE_PNEUMO_DATA)"
    while read -r f; do cp "$DATA/train/$cls/$f" "$SCRATCH/work/site/$cls/"; done \
      < <(find "$DATA/train/$cls" -maxdepth 1 -type f -iname '*.jpeg' -printf '%f\n' | LC_ALL=C sort | head -n 20)
  done
  mkdir -p "$SCRATCH/host"
  in_pi "$ARM_VENV/bin/edge-pneumo" calibrate /work/site --out /work/pi_site.json --model "$PI_EXPORTED" \
    --artifact tflite_int8 --name pi || rc=$?
  ((rc == 0)) && { in_pi "$ARM_VENV/bin/edge-pneumo" infer --model "$PI_EXPORTED" --site /work/pi_site.json \
    --dir /work/images --format json --output /work/out_site.jsonl || rc=$?; }
  "$HOST_EP" calibrate "$SCRATCH/work/site" --out "$SCRATCH/host/site.json" --model "$REPO/exported" \
    --artifact tflite_int8 --name host > /dev/null || rc=$?
  echo "$rc" > "$SCRATCH/site_rc"
  echo "calibrate + infer --site on arm64 and calibrate on the host: exit code $rc"
}

small_check() {  # the second shipped tier, by name: `infer --model small` on the Pi and on the host
  local img rc=0 artifact
  if [[ ! -f $REPO/exported/small/manifest.json ]]; then
    echo "no exported/small/manifest.json in $REPO: the small tier is not shipped yet, skipped"
    echo "skipped" > "$SCRATCH/small_rc"
    return 0
  fi
  [[ -f $ROOTFS$PI_EXPORTED/small/manifest.json ]] || die "the wheel does not ship exported/small/manifest.json"
  cmp -s "$ROOTFS$PI_EXPORTED/small/manifest.json" "$REPO/exported/small/manifest.json" \
    || die "the wheel's exported/small/manifest.json differs from the checkout's"
  mkdir -p "$SCRATCH/work/images_small" "$SCRATCH/host"
  local cls
  for cls in NORMAL PNEUMONIA; do  # the first image of each class, as stage_images orders them
    img=$(find "$DATA/test/$cls" -maxdepth 1 -type f \( -iname '*.jpeg' -o -iname '*.jpg' -o -iname '*.png' \) \
            -printf '%f\n' | LC_ALL=C sort | head -n1)
    [[ -n $img ]] || die "no test image in $DATA/test/$cls"
    cp "$DATA/test/$cls/$img" "$SCRATCH/work/images_small/"
  done
  # On the Pi, from / (no ./exported there): the name finds the wheel's copy.
  in_pi "$ARM_VENV/bin/edge-pneumo" infer --model small --dir /work/images_small --format json \
    --output /work/out_small.jsonl || rc=$?
  # The host from the checkout (./exported/small), with the artifact the Pi chose, so both run the same file.
  artifact=$("$HOST_PY" -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["artifact"])' \
    "$SCRATCH/work/out_small.jsonl" 2>/dev/null || true)
  (cd "$REPO" && "$HOST_EP" infer --model small ${artifact:+--artifact "$artifact"} \
    --dir "$SCRATCH/work/images_small" --format json --output "$SCRATCH/host/out_small.jsonl") || rc=$?
  echo "$rc" > "$SCRATCH/small_rc"
  echo "infer --model small (${artifact:-?}) on arm64 and on the host: exit code $rc"
}

# ------------------------------------------------------------------ 8. compare + summary
compare() {
  local summary=${SUMMARY:-$CACHE/last-run.json}
  local results_dir=${summary%.json}-results
  mkdir -p "$results_dir"
  "$HOST_PY" - "$SCRATCH" "$summary" "$results_dir" "$N_IMAGES" "$QEMU_CPU" "$(date +%s.%N)" "$T_START" \
    "$REPO/exported/manifest.json" <<'EOF'
import json, os, shutil, sys
from pathlib import Path

scratch, summary, results_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
n_expected, qemu_cpu = int(sys.argv[4]), sys.argv[5]
elapsed = float(sys.argv[6]) - float(sys.argv[7])
TOL = {"float32": 1e-4, "int8": 1 / 255}
VIEW_CHECK = "view_check" in json.loads(Path(sys.argv[8]).read_text())  # the guard's view check runs in every row
VIEW_TOL = 0.1  # its logit (int8 ONNX), Pi against host

def load(path):
    if not path.exists():
        return None
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return recs

rc = {}
for line in (scratch / "infer_rc.tsv").read_text().splitlines():
    side, name, code = line.split("\t")
    rc[(side, name)] = int(code)

rows, ok = [], True
for line in (scratch / "artifacts.tsv").read_text().splitlines():
    name, file, fmt, prec = line.split("\t")[:4]
    tol = TOL[prec]
    row = {"name": name, "file": file, "format": fmt, "precision": prec, "tolerance": tol,
           "rc_arm64": rc.get(("arm64", name)), "rc_host": rc.get(("host", name))}
    pi_path, host_path = scratch / "work" / f"out_{name}.jsonl", scratch / "host" / f"out_{name}.jsonl"
    pi, host = load(pi_path), load(host_path)
    problems = []
    if row["rc_arm64"] != 0 or pi is None: problems.append(f"arm64 infer failed (rc {row['rc_arm64']})")
    if row["rc_host"] != 0 or host is None: problems.append(f"host infer failed (rc {row['rc_host']})")
    if pi is not None and host is not None:
        for side, recs, dest in (("arm64", pi, pi_path), ("host", host, host_path)):
            shutil.copy(dest, results_dir / f"{side}_{name}.jsonl")
            row[f"results_{side}"] = str(results_dir / f"{side}_{name}.jsonl")
        failed = [Path(r["path"]).name for r in pi + host if r.get("status") == "failed"]
        if failed: problems.append(f"{len(failed)} images failed: {failed[:5]}")
        pi_by = {Path(r["path"]).name: r for r in pi}
        host_by = {Path(r["path"]).name: r for r in host}
        common = sorted(pi_by.keys() & host_by.keys())
        # the model's own output: calibration rescales differences, the raw probability is what the artifact computed
        dps = [abs(float(pi_by[k]["raw_probability"]) - float(host_by[k]["raw_probability"])) for k in common
               if pi_by[k].get("raw_probability") is not None and host_by[k].get("raw_probability") is not None]
        row.update(n_images=n_expected, n_arm64=len(pi), n_host=len(host), n_matched=len(common),
                   max_abs_dp=max(dps) if dps else None,
                   label_mismatches=[k for k in common
                                     if (pi_by[k]["status"], pi_by[k]["label"]) != (host_by[k]["status"], host_by[k]["label"])],
                   unmatched=sorted(pi_by.keys() ^ host_by.keys()))
        if not (len(pi) == len(host) == len(common) == n_expected):
            problems.append(f"record counts: arm64 {len(pi)}, host {len(host)}, matched {len(common)}, expected {n_expected}")
        if row["label_mismatches"]: problems.append(f"{len(row['label_mismatches'])} label mismatches")
        if dps and max(dps) > tol: problems.append(f"max |dp| {max(dps):.3g} > {tol:.3g}")
        dv = [abs(float(pi_by[k]["guard"]["view"]) - float(host_by[k]["guard"]["view"])) for k in common
              if "view" in (pi_by[k].get("guard") or {}) and "view" in (host_by[k].get("guard") or {})]
        row["max_abs_dview"] = max(dv) if dv else None
        classified = [k for k in common if host_by[k]["status"] == "classified"]
        if VIEW_CHECK and not all("view" in (pi_by[k].get("guard") or {}) for k in classified):
            problems.append("a classified row on arm64 has no view-check score")
        if dv and max(dv) > VIEW_TOL: problems.append(f"view score differs by {max(dv):.3g} > {VIEW_TOL}")
    row["problems"], row["ok"] = problems, not problems
    ok &= row["ok"]
    rows.append(row)

for r in rows:  # the Grad-CAM map of one image, Pi against host
    if r["precision"] != "int8":
        continue
    pi_map, host_map = scratch / "work" / f"heatmap_{r['name']}.npy", scratch / "host" / f"heatmap_{r['name']}.npy"
    if not (pi_map.exists() and host_map.exists()):
        r["problems"].append("no heatmap")
    else:
        import numpy as np

        d = float(np.abs(np.load(pi_map) - np.load(host_map)).max())
        r["heatmap_max_abs_diff"] = d
        if d > 0.02:
            r["problems"].append(f"heatmap differs from the host's by {d:.3f} (> 0.02)")
    r["ok"] = not r["problems"]
    ok &= r["ok"]
small = {"ran": False, "problems": []}  # the small tier by name (`infer --model small`), 2 images
small_rc = (scratch / "small_rc").read_text().strip() if (scratch / "small_rc").exists() else "missing"
if small_rc == "skipped":
    small["reason"] = "exported/small/manifest.json does not exist yet"
else:
    small["ran"], small["rc"] = True, int(small_rc) if small_rc.isdigit() else None
    pi, host = load(scratch / "work" / "out_small.jsonl"), load(scratch / "host" / "out_small.jsonl")
    if small["rc"] != 0 or not pi or not host:
        small["problems"].append(f"infer --model small failed (rc {small_rc})")
    else:
        for side, src in (("arm64", scratch / "work" / "out_small.jsonl"), ("host", scratch / "host" / "out_small.jsonl")):
            shutil.copy(src, results_dir / f"{side}_small.jsonl")
            small[f"results_{side}"] = str(results_dir / f"{side}_small.jsonl")
        pi_by, host_by = {Path(r["path"]).name: r for r in pi}, {Path(r["path"]).name: r for r in host}
        small["artifact"] = pi[0].get("artifact")
        small["model_version"] = pi[0].get("model_version")
        tol = TOL["float32" if "float32" in str(small["artifact"]) else "int8"]
        small["tolerance"] = tol
        if pi_by.keys() != host_by.keys() or len(pi_by) != 2:
            small["problems"].append(f"images: arm64 {sorted(pi_by)}, host {sorted(host_by)}")
        common = sorted(pi_by.keys() & host_by.keys())
        small["label_mismatches"] = [k for k in common if (pi_by[k]["status"], pi_by[k]["label"])
                                     != (host_by[k]["status"], host_by[k]["label"])]
        if small["label_mismatches"]: small["problems"].append(f"labels differ: {small['label_mismatches']}")
        if {host_by[k].get("artifact") for k in common} != {small["artifact"]}:
            small["problems"].append("the host ran another artifact")
        dps = [abs(float(pi_by[k]["raw_probability"]) - float(host_by[k]["raw_probability"])) for k in common
               if pi_by[k].get("raw_probability") is not None and host_by[k].get("raw_probability") is not None]
        small["max_abs_dp"] = max(dps) if dps else None
        if len(dps) != len(common): small["problems"].append("a row without a raw probability")
        if dps and max(dps) > tol: small["problems"].append(f"max |dp| {max(dps):.3g} > {tol:.3g}")
small["ok"] = not small["problems"]
ok &= small["ok"]

serve = {"rc": int((scratch / "serve_rc").read_text()) if (scratch / "serve_rc").exists() else None}
try:
    serve["healthz"] = json.loads((scratch / "work" / "pi_healthz.json").read_text())
except (OSError, ValueError):
    serve["healthz"] = None
serve["ok"] = serve["rc"] == 0 and (serve["healthz"] or {}).get("status") == "ok"
ok &= serve["ok"]
sr = {"rc": int((scratch / "sr_rc").read_text()) if (scratch / "sr_rc").exists() else None}
try:
    sr.update(json.loads((scratch / "work" / "pi_sr.json").read_text()))
except (OSError, ValueError):
    pass
sr["dsrdump"] = (scratch / "work" / "pi_sr.txt").exists()
sr["ok"] = sr["rc"] == 0 and sr.get("status") == "classified" and bool(sr.get("sr_sop_instance_uid"))
ok &= sr["ok"]

site = {"rc": int((scratch / "site_rc").read_text()) if (scratch / "site_rc").exists() else None, "problems": []}
try:
    import hashlib
    pi_site_path = scratch / "work" / "pi_site.json"
    pi_site = json.loads(pi_site_path.read_text())
    host_site = json.loads((scratch / "host" / "site.json").read_text())
    if pi_site["counts"] != host_site["counts"]:
        site["problems"].append(f"counts differ: arm64 {pi_site['counts']}, host {host_site['counts']}")
    for k in ("threshold", "rule_out", "rule_in"):
        d = abs(pi_site["calibration"][k] - host_site["calibration"][k])
        if d > 2 / 255:
            site["problems"].append(f"{k} differs from the host's by {d:.4f} (> 2/255)")
    sha = hashlib.sha256(pi_site_path.read_bytes()).hexdigest()[:16]
    site_rows = [json.loads(l) for l in (scratch / "work" / "out_site.jsonl").read_text().splitlines() if l.strip()]
    if len(site_rows) != n_expected or any(r.get("site") != sha for r in site_rows):
        site["problems"].append(f"infer --site: {len(site_rows)} rows, not all carrying the site file's hash {sha}")
    site["calibration_arm64"] = pi_site["calibration"]
except (OSError, ValueError, KeyError) as e:
    site["problems"].append(f"no usable site file or rows ({e})")
if site["rc"] != 0:
    site["problems"].append(f"exit code {site['rc']}")
site["ok"] = not site["problems"]
ok &= site["ok"]

verify = {"rc": int((scratch / "verify_rc").read_text()), "report": None, "problems": []}
try:
    verify["report"] = json.loads((scratch / "work" / "pi_verify.json").read_text())
    vrows = {r["name"]: r for r in verify["report"]["artifacts"]}
    for r in rows:
        v = vrows.get(r["name"], {"status": "missing", "notes": []})
        r["verify_status"] = v["status"]
        if v["status"] != "ok":
            verify["problems"].append(f"{r['name']}: {v['status']} {'; '.join(v['notes'])}")
except (OSError, ValueError, KeyError) as e:
    verify["problems"].append(f"no usable report ({e})")
if verify["rc"] != 0:
    verify["problems"].append(f"exit code {verify['rc']}")
verify["ok"] = not verify["problems"]
ok &= verify["ok"]

timings = {}
for line in (scratch / "timings.tsv").read_text().splitlines():
    k, v = line.split("\t")
    timings[k] = float(v)
pi_info = json.loads((scratch / "work" / "pi_info.json").read_text())
doc = {"ok": ok, "qemu_cpu": qemu_cpu, "n_images": n_expected, "arm64": pi_info,
       "verify": verify, "serve": serve, "sr": sr, "site": site, "small": small, "artifacts": rows, "timings_s": timings, "total_s": round(elapsed, 1)}
summary.parent.mkdir(parents=True, exist_ok=True)
summary.write_text(json.dumps(doc, indent=1))

print(f"arm64 (QEMU_CPU={qemu_cpu}): python {pi_info['python']}, "
      + ", ".join(f"{k} {v}" for k, v in pi_info["versions"].items()))
print(f"{'artifact':14s} {'file':26s} {'n':>3s} {'max|dp|':>9s} {'tol':>8s} {'labels!=':>8s} {'verify':>7s}  result")
for r in rows:
    mdp = "-" if r.get("max_abs_dp") is None else f"{r['max_abs_dp']:.2e}"
    nl = "-" if "label_mismatches" not in r else str(len(r["label_mismatches"]))
    print(f"{r['name']:14s} {r['file']:26s} {r.get('n_matched', 0):3d} {mdp:>9s} {r['tolerance']:8.2e} {nl:>8s} "
          f"{r.get('verify_status', '-'):>7s}  " + ("ok" if r["ok"] else "FAIL: " + "; ".join(r["problems"])))
print("edge-pneumo verify on arm64: " + ("ok" if verify["ok"] else "FAIL: " + "; ".join(verify["problems"])))
print("edge-pneumo serve on arm64: " + ("ok " + json.dumps(serve["healthz"]) if serve["ok"] else f"FAIL (rc {serve['rc']})"))
print("DICOM SR on arm64: " + ("ok" if sr["ok"] else f"FAIL (rc {sr['rc']})")
      + (", read by dsrdump" if sr["dsrdump"] else ""))
print("edge-pneumo calibrate + infer --site on arm64: " + ("ok" if site["ok"] else "FAIL: " + "; ".join(site["problems"])))
print("infer --model small on arm64: " + ("skipped: " + small["reason"] if not small["ran"] else
      f"ok ({small['artifact']}, max |dp| {small.get('max_abs_dp') or 0:.2e})" if small["ok"] else "FAIL: " + "; ".join(small["problems"])))
for r in rows:
    if "heatmap_max_abs_diff" in r:
        print(f"heatmap {r['name']}: max |diff| arm64 vs host {r['heatmap_max_abs_diff']:.4f}")
print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f"; total {elapsed:.1f}")
print(f"summary: {summary}")
sys.exit(0 if ok else 1)
EOF
}

# ================================================================== main
mkdir -p "$CACHE" "$SCRATCH/work"
exec 9> "$CACHE/.lock"
flock -n 9 || { echo "waiting for another run using $CACHE ..."; flock 9; }

echo "repo $REPO | cache $CACHE | mirror $MIRROR | QEMU_CPU $QEMU_CPU"
((PREPARE_ONLY)) || resolve_host
if [[ ${EDGE_PNEUMO_PI_FRESH:-0} == 1 ]]; then
  unmount_rootfs
  rm -rf --one-file-system "$ROOTFS" "$STAMPS"
fi

phase host_tools host_tools
[[ -e $STAMPS/debootstrap ]] || phase debootstrap build_rootfs
phase mount mount_rootfs
[[ -e $STAMPS/apt ]] || phase pi_apt pi_apt
if ((PREPARE_ONLY)); then
  echo "rootfs ready: $ROOTFS ($(du -shx "$CACHE" | cut -f1))"
  exit 0
fi

phase wheel_build build_wheel
phase fetch_wheels fetch_wheels
phase pi_venv pi_venv
phase pi_pip_install pi_pip_install
phase pi_check pi_check
phase artifacts check_artifacts
phase pi_verify pi_verify
phase images stage_images

: > "$SCRATCH/infer_rc.tsv"
while IFS=$'\t' read -r name file _; do
  phase "infer_arm64_$name" record_rc arm64 "$name" infer_pi "$name" "$file"
  phase "infer_host_$name"  record_rc host  "$name" infer_host "$name" "$file"
done < "$SCRATCH/artifacts.tsv"
phase heatmaps heatmaps
phase serve serve_check
phase sr sr_check
phase site site_check
phase small small_check

log "[compare]"
echo "cache: $(du -shx "$CACHE" | cut -f1) in $CACHE"
compare
