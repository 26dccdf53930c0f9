#!/usr/bin/env bash
# Smoke test of the OpenATP .deb, the way a clinic's IT would try it (run as root on a
# Debian/Ubuntu x86-64 machine; about 3-5 minutes, most of it planning the demo patient):
#
#   packaging/smoke_test.sh [dist/openatp_X.Y.Z-1_amd64.deb] 2>&1 | tee out/smoke_test.log
#
# Installs the package from a clean state, then runs everything as the unprivileged user
# `nobody` with its own home folder, an empty environment and PATH=/usr/bin:/bin (no venv,
# no pyenv): so the installation folder is read-only to the program, as on a clinic PC.
# Checks: --version; `openatp plan` of the bundled demo patient; the GUI screenshot offscreen
# (and in a real X window under Xvfb when xvfb-run exists); no display; CPU without AVX2
# kernels; user data inside the installation refused; installing over a running instance;
# upgrade keeps user data; removal and purge leave nothing outside the user data folder.
# Exit status: the number of failed checks.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEB=${1:-$(ls -t "$ROOT"/dist/openatp_*_amd64.deb 2>/dev/null | head -1)}
WORK=${SMOKE_WORK:-/tmp/openatp-smoke}
UHOME="$WORK/home"
DEMO=/opt/openatp/_internal/resources/demo/pt_demo.npz
FAILS=0
t0=$(date +%s)

pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
section() { echo; echo "== [$(( $(date +%s) - t0 )) s] $*"; }
# The program as a planner runs it: user nobody, own HOME, nothing inherited from this shell.
AS_USER=(setpriv --reuid=nobody --regid=nogroup --clear-groups
         env -i HOME="$UHOME" PATH=/usr/bin:/bin LANG=C.UTF-8 OMP_NUM_THREADS=1)
as_user() { "${AS_USER[@]}" "$@"; }
GUI_PID=
trap '[ -n "$GUI_PID" ] && kill "$GUI_PID" 2>/dev/null' EXIT  # never leave our GUI running
secs() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$1" "$2"; }

[ "$(id -u)" = 0 ] || { echo "smoke_test.sh: run as root (it installs a package)"; exit 99; }
[ -f "$DEB" ] || { echo "smoke_test.sh: no .deb given or found in dist/ (make package)"; exit 99; }
echo "OpenATP smoke test: $DEB ($(du -h "$DEB" | cut -f1)), $(date -u +%FT%TZ), $(nproc) CPUs, $(uname -m)"

section "clean state"
if dpkg -s openatp >/dev/null 2>&1; then echo "removing an earlier openatp"; dpkg -P openatp >/dev/null; fi
rm -rf "$WORK" && mkdir -p "$UHOME" "$WORK/out" && chown -R nobody:nogroup "$WORK"
check "nothing installed: no /opt/openatp, no /usr/bin/openatp" test ! -e /opt/openatp -a ! -e /usr/bin/openatp
check "no openatp on PATH=/usr/bin:/bin before install" bash -c '! PATH=/usr/bin:/bin command -v openatp'

section "install (dpkg -i)"
ts=$(date +%s.%N)
dpkg -i "$DEB"; rc=$?
echo "install took $(secs "$ts" "$(date +%s.%N)") s"
check "dpkg -i exit 0" test "$rc" = 0
check "package state installed" bash -c 'dpkg -s openatp | grep -q "^Status: install ok installed"'
dpkg -L openatp > "$WORK/installed-files.txt"
for p in /opt/openatp/openatp /usr/bin/openatp /usr/share/applications/openatp.desktop \
         /usr/share/icons/hicolor/scalable/apps/openatp.svg /opt/openatp/_internal/resources/models/hn/model.pt \
         /opt/openatp/_internal/resources/protocols/hn.json "$DEMO"; do
    check "installed $p" test -e "$p"
done
check "bundle carries its own Python (libpython)" bash -c 'ls /opt/openatp/_internal/libpython3*.so* >/dev/null'
check "bundle carries no CUDA libraries" bash -c '! find /opt/openatp -name "libcudart*" -o -name "libcudnn*" | grep -q .'
if command -v desktop-file-validate >/dev/null; then
    check "desktop entry valid" desktop-file-validate /usr/share/applications/openatp.desktop
fi
echo "installed size: $(du -sh /opt/openatp | cut -f1) in /opt/openatp ($(dpkg -s openatp | sed -n 's/^Installed-Size: //p') KiB per dpkg)"
# Libraries some bundled file needs (ELF NEEDED) that the bundle does not carry: they come from
# the machine (the .deb's Depends), or are missing and only an optional plugin needs them.
find /opt/openatp -type f \( -name '*.so*' -o -name openatp \) -print0 \
    | xargs -0 objdump -p 2>/dev/null | awk '$1 == "NEEDED" {print $2}' | sort -u > "$WORK/needed.txt"
find /opt/openatp -name '*.so*' -printf '%f\n' | sort -u > "$WORK/carried.txt"
echo "system libraries the bundle uses from the machine:"
comm -23 "$WORK/needed.txt" "$WORK/carried.txt" | while read -r lib; do
    if ldconfig -p | grep -q "^[[:space:]]*$lib "; then printf '%s ' "$lib"; else printf '%s(MISSING) ' "$lib"; fi
done; echo
snapshot() { find /opt/openatp -printf '%p %s %T@\n' | sort | md5sum | cut -d' ' -f1; }
SNAP=$(snapshot)

section "openatp --version (as nobody, PATH=/usr/bin:/bin)"
as_user sh -c 'command -v openatp'
as_user openatp --version > "$WORK/version.txt"; rc=$?
cat "$WORK/version.txt"
check "--version exit 0" test "$rc" = 0
check "--version first line 'openatp X.Y.Z'" grep -qE '^openatp [0-9]+\.[0-9]+\.[0-9]+$' <(head -1 "$WORK/version.txt")
check "--version lists the CPU torch, PySide6, VTK and the hn model" \
    bash -c "grep -q 'torch [0-9.]*+cpu' $WORK/version.txt && grep -q PySide6 $WORK/version.txt && grep -q VTK $WORK/version.txt && grep -q '^model hn' $WORK/version.txt"

section "openatp plan (demo patient from the installed bundle)"
ts=$(date +%s.%N)
as_user openatp plan "$DEMO" --site hn --out "$WORK/out/demo_plan" --json > "$WORK/plan.json" 2> "$WORK/plan.err"; rc=$?
echo "plan took $(secs "$ts" "$(date +%s.%N)") s, exit $rc"; tail -3 "$WORK/plan.err"
check "plan exit 0" test "$rc" = 0
for f in dose.npz RTPLAN.dcm RTDOSE.dcm report.html metrics.json; do
    check "plan wrote $f (> 1 kB)" test "$(stat -c %s "$WORK/out/demo_plan/$f" 2>/dev/null || echo 0)" -gt 1000
done
python3 - "$WORK/out/demo_plan/metrics.json" <<'PY' && pass "metrics: CPU, MU > 0, goals evaluated" || fail "metrics: CPU, MU > 0, goals evaluated"
import json, sys
m = json.load(open(sys.argv[1]))
met = sum(bool(g.get("met")) for g in m["goals"])
print(f"  device {m['device']}, total MU {m['total_mu']:.0f}, goals met {met}/{len(m['goals'])}, all P1 met {m['all_p1_met']}, "
      f"total {m['timings_s']['total']:.1f} s")
for g in m["goals"]:
    if g["priority"] == 1:
        print(f"  P1 {g['structure']} {g['type']}: achieved {g.get('achieved')} (goal {g.get('dose_gy')}) {'met' if g['met'] else 'NOT met'}")
sys.exit(0 if m["device"] == "cpu" and m["total_mu"] > 0 and m["goals"] else 1)
PY

section "openatp gui DEMO --screenshot (offscreen, first start after install)"
ts=$(date +%s.%N)
as_user env QT_QPA_PLATFORM=offscreen openatp gui "$DEMO" --screenshot "$WORK/out/shot.png" --device cpu \
    2> "$WORK/gui.err"; rc=$?
GUI_S=$(secs "$ts" "$(date +%s.%N)")
cat "$WORK/gui.err"
echo "GUI start to screenshot written and exited: $GUI_S s"
check "gui --screenshot exit 0" test "$rc" = 0
check "screenshot is a 1600x1000 PNG" bash -c "file '$WORK/out/shot.png' | grep -q 'PNG image data, 1600 x 1000'"
check "screenshot not trivial (> 100 kB)" test "$(stat -c %s "$WORK/out/shot.png" 2>/dev/null || echo 0)" -gt 100000
check "cold start under 5 s" python3 -c "import sys; sys.exit(0 if float('$GUI_S') < 5 else 1)"
if command -v xvfb-run >/dev/null; then
    ts=$(date +%s.%N)
    as_user xvfb-run -a -s "-screen 0 1600x1000x24" openatp gui "$DEMO" --screenshot "$WORK/out/shot_x11.png" \
        --panel 3d --device cpu 2> "$WORK/gui_x11.err"; rc=$?
    tail -2 "$WORK/gui_x11.err"
    echo "real X window (Xvfb, xcb plugin, VTK 3D view): $(secs "$ts" "$(date +%s.%N)") s"
    check "gui in a real X window (Xvfb) exit 0, screenshot written" \
        test "$rc" = 0 -a "$(stat -c %s "$WORK/out/shot_x11.png" 2>/dev/null || echo 0)" -gt 100000
fi

section "bad input: no display"
as_user openatp gui "$DEMO" > /dev/null 2> "$WORK/nodisplay.err"; rc=$?
cat "$WORK/nodisplay.err"
check "no display: exit 2 with one clear line" \
    bash -c "[ $rc = 2 ] && [ \$(grep -c . '$WORK/nodisplay.err') = 1 ] && grep -q 'no display found' '$WORK/nodisplay.err'"
as_user openatp info "$DEMO" --json > "$WORK/info.json"; rc=$?
check "no display: the CLI still works (openatp info)" bash -c "[ $rc = 0 ] && grep -q PTV70 '$WORK/info.json'"

section "bad input: no AVX2, no GPU"
ts=$(date +%s.%N)
as_user env ATEN_CPU_CAPABILITY=default openatp predict "$DEMO" --site hn --out "$WORK/out/pred.npz" --device auto \
    --json > "$WORK/pred.json" 2> "$WORK/pred.err"; rc=$?
echo "predict with torch's baseline kernels (ATEN_CPU_CAPABILITY=default, no AVX/AVX2): exit $rc," \
     "$(secs "$ts" "$(date +%s.%N)") s: $(head -c 300 "$WORK/pred.json")"; tail -2 "$WORK/pred.err"
check "no AVX2 kernels: predict runs on the CPU" bash -c "[ $rc = 0 ] && grep -q '\"device\": *\"cpu\"' '$WORK/pred.json'"
as_user openatp dose phantom:water --beams "gantry=0,field=100x100,ssd=1000" --fluence open --out "$WORK/out/w.npz" \
    --device cuda > /dev/null 2> "$WORK/cuda.err"; rc=$?
echo "--device cuda without a GPU: exit $rc: $(cat "$WORK/cuda.err")"
check "--device cuda without a GPU: clear one-line error or CPU, never a traceback" \
    bash -c "! grep -q Traceback '$WORK/cuda.err' && [ $rc = 0 -o $rc = 2 ]"

section "read-only installation, user data outside it"
check "nothing written into /opt/openatp by any run" test "$(snapshot)" = "$SNAP"
LOG="$UHOME/.local/share/OpenATP/logs/openatp.log"
check "log file in the user's data folder" test -s "$LOG"
echo "log: $(wc -l < "$LOG") lines; last: $(tail -1 "$LOG")"
as_user env OPENATP_USER_DIR=/opt/openatp/userdata openatp --version > /dev/null 2> "$WORK/inside.err"; rc=$?
cat "$WORK/inside.err"
check "OPENATP_USER_DIR inside the installation: warning, runs with ~/OpenATP" \
    bash -c "[ $rc = 0 ] && grep -q 'inside the OpenATP installation' '$WORK/inside.err' && [ -d '$UHOME/OpenATP/logs' ] && [ ! -e /opt/openatp/userdata ]"

section "upgrade over a running instance, upgrade keeps user data"
mkdir -p "$UHOME/.local/share/OpenATP/protocols"
sed 's/"site": *"hn"/"site": "hn_clinic"/' /opt/openatp/_internal/resources/protocols/hn.json \
    > "$UHOME/.local/share/OpenATP/protocols/hn_clinic.json"
chown -R nobody:nogroup "$UHOME"
USERDATA_SUM=$(cd "$UHOME/.local/share/OpenATP" && find protocols -type f -exec md5sum {} + | sort | md5sum)
# the "next version": the same bundle with a higher package version
rm -rf "$WORK/next" && dpkg-deb -R "$DEB" "$WORK/next"
OLD_VERSION=$(dpkg-deb -f "$DEB" Version)
NEXT_VERSION="${OLD_VERSION%-*}-$(( ${OLD_VERSION##*-} + 1 ))"
sed -i "s/^Version: .*/Version: $NEXT_VERSION/" "$WORK/next/DEBIAN/control"
dpkg-deb --root-owner-group -Znone -b "$WORK/next" "$WORK/openatp_next.deb" > /dev/null && rm -rf "$WORK/next"
"${AS_USER[@]}" QT_QPA_PLATFORM=offscreen openatp gui "$DEMO" > /dev/null 2>&1 &
GUI_PID=$!  # setpriv, env and the /usr/bin wrapper all exec: this PID becomes the bundle's own process
for _ in $(seq 40); do [ "$(readlink /proc/$GUI_PID/exe 2>/dev/null)" = /opt/openatp/openatp ] && break; sleep 0.5; done
check "an OpenATP window is running (pid $GUI_PID)" test "$(readlink /proc/$GUI_PID/exe 2>/dev/null)" = /opt/openatp/openatp
sleep 2
dpkg -i "$WORK/openatp_next.deb" > "$WORK/running.out" 2>&1; rc=$?
grep -E "openatp:|error" "$WORK/running.out" | head -4
check "install over a running instance refused with a clear message" \
    bash -c "[ $rc != 0 ] && grep -q 'OpenATP is running' '$WORK/running.out'"
check "... and the installed version still works" bash -c \
    "dpkg -s openatp | grep -q '^Version: $OLD_VERSION' && /usr/bin/openatp --version > /dev/null"
kill "$GUI_PID"; wait "$GUI_PID" 2>/dev/null; GUI_PID=
dpkg -i "$WORK/openatp_next.deb" > /dev/null; rc=$?
check "upgrade to $NEXT_VERSION after closing it" bash -c "[ $rc = 0 ] && dpkg -s openatp | grep -q '^Version: $NEXT_VERSION'"
check "upgrade kept the user's templates" test "$(cd "$UHOME/.local/share/OpenATP" && find protocols -type f -exec md5sum {} + | sort | md5sum)" = "$USERDATA_SUM"
as_user openatp info "$DEMO" --json > /dev/null; rc=$?
check "upgraded installation runs" test "$rc" = 0
rm -f "$WORK/openatp_next.deb"

section "remove and purge"
dpkg -r openatp > /dev/null; rc=$?
check "dpkg -r exit 0" test "$rc" = 0
check "/opt/openatp gone after remove" test ! -e /opt/openatp
dpkg -P openatp > /dev/null; rc=$?
check "dpkg -P exit 0" test "$rc" = 0
check "package unknown to dpkg after purge" bash -c '! dpkg -s openatp > /dev/null 2>&1'
left=0
while read -r p; do
    [ -d "$p" ] && continue  # shared folders (/usr/share/applications, /opt) stay
    if [ -e "$p" ] || [ -L "$p" ]; then
        left=$((left + 1)); [ "$left" -le 10 ] && echo "  left over: $p"
    fi
done < "$WORK/installed-files.txt"
check "every installed file removed ($(wc -l < "$WORK/installed-files.txt") paths)" test "$left" = 0
strays=$(find /opt /usr /etc /var/lib/dpkg/info -name '*openatp*' 2>/dev/null | grep -v "^$ROOT" | head)
[ -n "$strays" ] && echo "$strays"
check "no openatp files left in /opt /usr /etc /var/lib/dpkg/info" test -z "$strays"
check "user data folder kept (templates, logs)" \
    test -s "$UHOME/.local/share/OpenATP/protocols/hn_clinic.json" -a -s "$LOG"
echo "user data after purge: $(cd "$UHOME/.local/share/OpenATP" && find . -type f | sort | tr '\n' ' ')"

section "summary"
echo "outputs kept in $WORK/out (screenshots, demo plan)"
if [ "$FAILS" = 0 ]; then echo "SMOKE TEST PASSED ($(( $(date +%s) - t0 )) s)"; else echo "SMOKE TEST FAILED: $FAILS check(s) ($(( $(date +%s) - t0 )) s)"; fi
exit "$FAILS"
