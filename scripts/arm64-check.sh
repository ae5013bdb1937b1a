#!/usr/bin/env bash
# Proof on arm64: builds a Debian 12 (bookworm) arm64 root from Debian's own packages, copies this checkout into it,
# installs the project there with the README's commands (scripts/bootstrap.sh "" for the runtime, then scripts/demo.sh
# --fast, which installs the dev extras and replays the bundled clip to a private Mosquitto), and checks the shipped
# models on known inputs. On an x86-64 machine the arm64 root runs under qemu-user-static through binfmt_misc, so it
# proves the install path, Debian's arm64 packages and the aarch64 wheels on the OS a Raspberry Pi runs; its timings
# mean nothing (emulation is many times slower than a Pi) and are not speed figures.
#
# Usage: sudo scripts/arm64-check.sh [--fresh]
#   --fresh   rebuild the Debian root from scratch (otherwise an existing one is reused: debootstrap takes a while)
# Environment: EMOTION_EDGE_ARM64_ROOT (default /var/tmp/emotion-edge-arm64), DEBIAN_MIRROR
# (default http://deb.debian.org/debian). Needs root, network access to the mirror and to PyPI, about 3 GB of disk.
# Output: progress, then exactly one last line `arm64-check: pass` or `arm64-check: fail: <why>`; exit 0 or 1.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

root="${EMOTION_EDGE_ARM64_ROOT:-/var/tmp/emotion-edge-arm64}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
fresh=0
for arg in "$@"; do
  case "$arg" in
    --fresh) fresh=1 ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "arm64-check: fail: unknown argument '$arg' (use --fresh or nothing)"; exit 1 ;;
  esac
done

verdict=""  # set once; the EXIT trap prints it as the last line
fail() { verdict="fail: $*"; exit 1; }
say() { echo "== $*"; }
proj=/root/emotion-edge  # where the checkout lies inside the root, as a Pi user's clone in their home would

# ---------------------------------------------------------------------------- mounts and clean-up

mounted=()
owner=0  # 1 once this run holds the root's lock: only then is anything in the root this run's to clean up
unmount_all() {
  [ "$owner" -eq 1 ] || return 0
  # Processes still running inside the root (a demo broker left behind by a failure) would keep /dev busy: end them
  # by id, only those whose root is ours.
  local pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] && kill "$pid" 2>/dev/null
  done
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -R "${mounted[$i]}" 2>/dev/null || umount -R -l "${mounted[$i]}" 2>/dev/null
  done
  mounted=()
}
finish() {
  local rc=$?
  unmount_all
  [ -n "$verdict" ] || verdict="fail: interrupted (exit $rc)"
  echo "arm64-check: $verdict"
  [ "$verdict" = pass ] && exit 0 || exit 1
}
trap finish EXIT
trap 'fail "interrupted"' INT TERM

mount_root() {
  # /proc, /sys and /dev as the root's programs expect them; /dev recursively (pts, shm) and as a slave so nothing
  # done inside propagates back. resolv.conf so apt and pip resolve names.
  mkdir -p "$root/proc" "$root/sys" "$root/dev"
  mount -t proc proc "$root/proc" && mounted+=("$root/proc") || fail "cannot mount /proc in $root"
  mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys") || fail "cannot mount /sys in $root"
  mount --rbind /dev "$root/dev" && mounted+=("$root/dev") || fail "cannot bind /dev into $root"
  mount --make-rslave "$root/dev"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}

# Runs a command as root inside the root with a clean environment (nothing of the host's pip or Python settings),
# its output shown and kept in $root/var/log/arm64-check/NAME.log; on failure the reason names the step and the
# last error line it printed (pip's "No matching distribution found for …", apt's "E: …").
in_root() {
  local name=$1; shift
  local log="$root/var/log/arm64-check/$name.log"
  mkdir -p "$(dirname "$log")"
  local start=$SECONDS
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb "${proxy_env[@]}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd $proj && $*" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  echo "   ($name: exit $rc, $((SECONDS - start)) s of wall time under emulation: not a speed figure)"
  if [ "$rc" -ne 0 ]; then
    local why
    why=$(grep -E 'No matching distribution|ERROR:|[Ee]rror:|^E: |Traceback|CHECK FAILED' "$log" | tail -1)
    fail "$name exited $rc${why:+: $why}"
  fi
}

# ---------------------------------------------------------------------------- the host: root, tools, binfmt

[ "$(id -u)" -eq 0 ] || fail "needs root for debootstrap, mount and chroot (run: sudo scripts/arm64-check.sh)"
git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 || fail "$repo is not a git checkout (the check copies its tracked files)"
# One run at a time on a root: a second would unmount the first's /dev or delete its checkout.
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock -n 9 || fail "another arm64-check is running on $root"
owner=1

host_arch=$(uname -m)
tools=(debootstrap)
[ "$host_arch" = aarch64 ] || tools+=(qemu-user-static binfmt-support)
need=()
for pkg in "${tools[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} on the host"
  apt=(apt-get -o DPkg::Lock::Timeout=600)
  "${apt[@]}" update -qq || fail "apt-get update failed on the host"
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${need[@]}" >/dev/null ||
    fail "cannot install ${need[*]} on the host"
fi

if [ "$host_arch" != aarch64 ]; then
  # binfmt_misc lets the kernel hand arm64 binaries to qemu-aarch64-static; the F flag (Debian's default) opens the
  # interpreter at registration, so it works inside the chroot without a copy there.
  bm=/proc/sys/fs/binfmt_misc
  [ -e "$bm/register" ] || mount -t binfmt_misc binfmt_misc "$bm" || fail "cannot mount binfmt_misc at $bm"
  if [ ! -e "$bm/qemu-aarch64" ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  fi
  if [ ! -e "$bm/qemu-aarch64" ]; then
    conf=$(ls /usr/lib/binfmt.d/qemu-aarch64*.conf 2>/dev/null | head -1)
    [ -n "$conf" ] && grep -v '^#' "$conf" | head -1 >"$bm/register" 2>/dev/null
  fi
  [ -e "$bm/qemu-aarch64" ] || fail "qemu-aarch64 is not registered with binfmt_misc (try: update-binfmts --enable qemu-aarch64)"
  grep -q '^enabled' "$bm/qemu-aarch64" || echo 1 >"$bm/qemu-aarch64"
  say "binfmt: $(tr '\n' ' ' <"$bm/qemu-aarch64" | cut -c1-80)"
fi

# ---------------------------------------------------------------------------- the Debian 12 arm64 root

if [ "$fresh" -eq 1 ] && [ -d "$root" ]; then
  # Never delete through a mount: a /dev or /proc left mounted by a killed run would take the host's with it.
  findmnt -rn -o TARGET | grep -q "^$root/" && fail "something is still mounted under $root (umount -R it first)"
  say "removing $root (--fresh)"
  rm -rf --one-file-system "$root" || fail "cannot remove $root"
fi
if [ ! -f "$root/.arm64-check-root" ]; then
  findmnt -rn -o TARGET | grep -q "^$root/" && fail "something is still mounted under $root (umount -R it first)"
  rm -rf --one-file-system "$root"
  mkdir -p "$root"
  # What Raspberry Pi OS Lite (64-bit, bookworm) starts with that minbase lacks: Python 3 and the CA certificates.
  # Everything else comes from the project's own scripts/bootstrap.sh.
  say "debootstrap --arch arm64 bookworm from $mirror into $root (slow under emulation)"
  start=$SECONDS
  debootstrap --arch arm64 --variant=minbase --include=python3,ca-certificates bookworm "$root" "$mirror" \
    >"$root.debootstrap.log" 2>&1 || fail "debootstrap failed: $(tail -1 "$root.debootstrap.log") (log: $root.debootstrap.log)"
  echo "   (debootstrap: $((SECONDS - start)) s of wall time)"
  # Services are not started inside a chroot (Debian's mosquitto would start the system-wide broker on install).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
  touch "$root/.arm64-check-root"
fi

# A TLS-inspecting proxy between this machine and PyPI signs with a CA that the host trusts through
# /usr/local/share/ca-certificates; the root trusts the same ones (Debian's pip uses the system bundle), or pip could
# not verify PyPI there. A host's proxy settings go in too.
proxy_env=()
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [ -n "${!var:-}" ] && proxy_env+=("$var=${!var}")
done

# ---------------------------------------------------------------------------- the checkout, fresh each run

commit=$(git -C "$repo" rev-parse --short HEAD)
dirty=""; [ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] || dirty=" with uncommitted changes"
say "copying the tracked files of $repo ($commit$dirty) to $proj (a fresh .venv; pip's download cache is kept)"
rm -rf --one-file-system "$root$proj"
mkdir -p "$root$proj"
# The working tree's tracked files (what a clone has), not .venv or anything else untracked.
(cd "$repo" && git ls-files -z | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf -) | tar -xf - -C "$root$proj" || fail "cannot copy the checkout into $root$proj"

mount_root
in_root certificates "update-ca-certificates >/dev/null"
say "in the root: $(chroot "$root" uname -m), $(. "$root/etc/os-release" && echo "$PRETTY_NAME"), $(chroot "$root" python3 -V)"
[ "$(chroot "$root" uname -m)" = aarch64 ] || fail "the root does not run as aarch64"

# ---------------------------------------------------------------------------- the README's install, then checks

say "scripts/bootstrap.sh \"\" (the runtime alone, as a Pi installs it)"
in_root bootstrap 'scripts/bootstrap.sh ""'

say "what pip installed (platform tags of the compiled ones; linux_aarch64 = built here from source)"
in_root wheels ".venv/bin/python - <<'EOF'
import importlib.metadata as md
seen = set()
for d in sorted(md.distributions(), key=lambda d: d.metadata['Name'].lower()):
    if d.metadata['Name'] in seen:  # the editable install's egg-info in the checkout, beside its dist-info
        continue
    seen.add(d.metadata['Name'])
    wheel = d.read_text('WHEEL') or ''
    tags = [l.split(': ', 1)[1] for l in wheel.splitlines() if l.startswith('Tag: ')]
    pure = 'Root-Is-Purelib: true' in wheel
    kind = 'pure Python' if pure else ' '.join(tags) or 'this checkout'
    print(f\"  {d.metadata['Name']}=={d.version}  {kind}\")
EOF"

say "self-check of the shipped models: three frames of the bundled clip (happy, angry, surprise) and the speech fixtures"
in_root selfcheck ".venv/bin/emotion-edge --version && .venv/bin/python - <<'EOF'
import json, subprocess, sys
from pathlib import Path
import cv2

# Frames at 3 s, 9 s and 15 s of the clip: its three 6-second segments are happy, angry and surprise.
want = {30: 'happy', 90: 'angry', 150: 'surprise'}
cap, n, paths = cv2.VideoCapture('tests/fixtures/av/clip.mp4'), 0, {}
while True:
    ok, frame = cap.read()
    if not ok:
        break
    n += 1
    if n in want:
        paths[n] = f'/tmp/arm64-check-frame{n}.png'
        cv2.imwrite(paths[n], frame)
if len(paths) != len(want):
    sys.exit(f'CHECK FAILED: OpenCV read {n} frames of the clip')

def classify(*args):
    out = subprocess.run(['.venv/bin/emotion-edge', 'classify', *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f'CHECK FAILED: emotion-edge classify {args[0]} exited {out.returncode}: {out.stderr.strip()[-300:]}')
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]

bad = []
faces = classify('face', *paths.values())
for (n, label), r in zip(want.items(), faces):
    print(f\"  face  frame {n:3d}: {r.get('label')} {r.get('confidence')} faces={r.get('faces')} (expected {label})\")
    if r.get('label') != label:
        bad.append(f'frame {n} gave {r.get(\"label\")}, expected {label}')
if len(faces) != len(want):
    bad.append(f'{len(faces)} face results for {len(want)} frames')

# Every speech fixture must get a label; RAVDESS names carry the acted emotion (3rd field), shown beside it.
ravdess = {'01': 'neutral', '02': 'calm', '03': 'happy', '04': 'sad', '05': 'angry', '06': 'fear', '07': 'disgust', '08': 'surprise'}
wavs = sorted(str(p) for p in Path('tests/fixtures/speech').glob('*.wav'))
speech = classify('speech', *wavs)
for w, r in zip(wavs, speech):
    name = Path(w).stem
    acted = ravdess.get(name.split('-')[2]) if name.startswith('ravdess_') else None
    print(f\"  speech {name}: {r.get('label')} {r.get('confidence')}\" + (f' (acted {acted})' if acted else ''))
    if not r.get('label'):
        bad.append(f'{name} gave no label')
if len(speech) != len(wavs):
    bad.append(f'{len(speech)} speech results for {len(wavs)} wavs')
if bad:
    sys.exit('CHECK FAILED: ' + '; '.join(bad))
print('  self-check: all labels as expected')
EOF"

say "scripts/demo.sh --fast (the README's quick start: bootstrap with the dev extras, then the demo on a private Mosquitto)"
in_root demo "scripts/demo.sh --fast"
log="$root/var/log/arm64-check/demo.log"
events=$(grep -c '^event seq=' "$log")
done_n=$(sed -n 's/^done: \([0-9]*\) events.*/\1/p' "$log" | tail -1)
grep -q '^started a private mosquitto broker' "$log" || fail "the demo did not start Debian's Mosquitto"
[ -n "$done_n" ] && [ "$done_n" -gt 0 ] || fail "the demo published no events"
[ "$events" -eq "$done_n" ] || fail "the demo published $done_n events but its subscriber received $events"
for emotion in happy angry surprise; do
  grep -q "^event seq=.*s  $emotion " "$log" || fail "no demo event said $emotion (the clip shows happy, angry, surprise)"
done
grep -q '^event seq=.*face .*speech ' "$log" || fail "no demo event carried both a face and a speech prediction"
say "demo: $events events over MQTT, with happy, angry and surprise, face and speech"

verdict=pass
