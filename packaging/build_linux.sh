#!/usr/bin/env bash
# make package: the Linux installer of OpenATP, from the project's wheel.
#
#   wheel (pyproject.toml, resources/** as package data)
#     -> build venv packaging/.venv-build (CPU torch, the wheel and its deps, PyInstaller)
#     -> PyInstaller one-folder bundle (packaging/openatp.spec)
#     -> dist/openatp_<version>-1_amd64.deb  (/opt/openatp, /usr/bin/openatp, menu entry, icon)
#     -> dist/openatp-<version>-linux-x86_64.tar.gz  (relocatable: unpack anywhere, run ./openatp/openatp)
#
# Options (environment):
#   OPENATP_TORCH=cpu|cuda   torch build in the bundle (default cpu; cuda is untested here: it
#                            needs TORCH_INDEX=https://download.pytorch.org/whl/cu128 and makes the
#                            bundle some GB larger)
#   TORCH_INDEX=URL          extra package index holding that torch build
#   OPENATP_PACKAGE_SOURCE=head|worktree   build the wheel from the last commit (default: what
#                            was committed is what ships) or from the working tree as it is
#   DEB_COMPRESS=zstd|xz|gzip  .deb compression (default zstd: dpkg >= 1.21.18, i.e. Debian 12,
#                            Ubuntu >= 21.10; xz for older dpkg, but it took > 5 min for 1.6 GB here)
#   PYTHON=python3           interpreter for the build venv (needs a shared libpython)
#   OPENATP_REUSE_BUNDLE=1   keep the last PyInstaller bundle, redo only the .deb and tarball
#                            (after editing packaging/linux/*; seconds instead of minutes)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${VENV_BUILD:-packaging/.venv-build}
PY="$VENV/bin/python"
BUILD="$ROOT/build/package"
DIST="$ROOT/dist"
TORCH_VARIANT=${OPENATP_TORCH:-cpu}
SOURCE=${OPENATP_PACKAGE_SOURCE:-head}
DEB_COMPRESS=${DEB_COMPRESS:-zstd}
PYINSTALLER_VERSION=6.22.3
TORCH_VERSION=2.13.0
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

t_start=$(date +%s)
step() { echo "== [$(( $(date +%s) - t_start )) s] $*"; }

BUNDLE="$BUILD/pyi/dist/openatp"
if [ "${OPENATP_REUSE_BUNDLE:-0}" = 1 ] && [ -f "$BUNDLE/VERSION" ]; then
    step "reusing the bundle $BUNDLE ($(cat "$BUNDLE/VERSION"))"
    VERSION=$(cut -d' ' -f1 "$BUNDLE/VERSION")
    rm -rf "$BUILD/deb"
else
# -- 1. build venv ----------------------------------------------------------------------------
step "build venv $VENV"
if [ ! -x "$PY" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
"$PY" -c 'import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else
  "build venv python has no shared libpython (PyInstaller needs it): use PYTHON=... built with --enable-shared")'
# CPU wheel first and pinned: the default Linux torch on PyPI is the multi-GB CUDA build. Where
# pip's configuration does not already offer the CPU wheel (it does here, from a local folder),
# set TORCH_INDEX=https://download.pytorch.org/whl/cpu (or .../cu128 with OPENATP_TORCH=cuda).
"$PY" -m pip install -q "torch==$TORCH_VERSION" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}
"$PY" -m pip install -q "pyinstaller==$PYINSTALLER_VERSION" "setuptools>=68" wheel build
"$PY" -c 'import torch, sys; v = torch.__version__; print("torch", v)
sys.exit(0 if ("+cpu" in v) == (sys.argv[1] == "cpu") else f"torch {v} is not the {sys.argv[1]} build")' "$TORCH_VARIANT"

# -- 2. wheel ------------------------------------------------------------------------------------
step "wheel from $SOURCE"
rm -rf "$BUILD" && mkdir -p "$BUILD" "$DIST"
if [ "$SOURCE" = head ] && git rev-parse --git-dir >/dev/null 2>&1; then
    SRC="$BUILD/src"
    mkdir -p "$SRC"
    git archive HEAD | tar -x -C "$SRC"
    COMMIT=$(git rev-parse --short HEAD)
else
    SRC="$ROOT"
    COMMIT=worktree
fi
"$PY" -m build --wheel --no-isolation --outdir "$BUILD/wheel" "$SRC" >"$BUILD/wheel.log" 2>&1 \
    || { tail -20 "$BUILD/wheel.log"; exit 1; }
WHEEL=$(ls "$BUILD"/wheel/openatp-*.whl)
cp "$WHEEL" "$DIST/"
VERSION=$(basename "$WHEEL" | cut -d- -f2)
echo "wheel $(basename "$WHEEL") (commit $COMMIT)"
"$PY" -m pip install -q --force-reinstall --no-deps "$WHEEL"
"$PY" -m pip install -q "$WHEEL"  # its dependencies (torch already satisfied by the pinned build)
"$PY" -m pip check || true

# -- 3. PyInstaller bundle ---------------------------------------------------------------------
step "PyInstaller bundle"
# Work outside the checkout so that `core`, `app`, `widgets`, `resources` resolve to the wheel.
mkdir -p "$BUILD/pyi"
(cd "$BUILD/pyi" && "$ROOT/$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath "$BUILD/pyi/dist" --workpath "$BUILD/pyi/work" "$ROOT/packaging/openatp.spec")
echo "$VERSION ($COMMIT, torch $TORCH_VARIANT)" > "$BUNDLE/VERSION"
# The bundle starts, imports torch and runs the model (more in smoke_test.sh). --version alone
# would not do: it imports no torch, and a torch module left out shows only when torch loads.
OPENATP_LOG=off "$BUNDLE/openatp" --version >/dev/null
OPENATP_LOG=off "$BUNDLE/openatp" predict "$BUNDLE/_internal/resources/demo/pt_demo.npz" --site hn --device cpu \
    --out "$BUILD/check_predict.npz" --json >/dev/null
fi
du -sh "$BUNDLE"

# Highest glibc symbol version the bundle needs: the oldest Linux it runs on.
GLIBC_MIN=$(find "$BUNDLE" -type f \( -name '*.so*' -o -name openatp \) -print0 \
    | xargs -0 objdump -T 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)
echo "needs glibc >= $GLIBC_MIN"

# -- 4. .deb ----------------------------------------------------------------------------------------
step ".deb"
DEB_VERSION="$VERSION-1"
STAGE="$BUILD/deb/openatp_${DEB_VERSION}_amd64"
mkdir -p "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" \
         "$STAGE/usr/share/icons/hicolor/scalable/apps" "$STAGE/usr/share/doc/openatp" "$STAGE/DEBIAN"
cp -al "$BUNDLE" "$STAGE/opt/openatp"  # hard links: no second GB on disk
install -m 755 packaging/linux/openatp-wrapper.sh "$STAGE/usr/bin/openatp"
install -m 644 packaging/linux/openatp.desktop "$STAGE/usr/share/applications/openatp.desktop"
install -m 644 resources/icons/openatp.svg "$STAGE/usr/share/icons/hicolor/scalable/apps/openatp.svg"
printf 'OpenATP %s\nLicence: MIT (see pyproject.toml). Bundled third-party components keep their own\nlicences; their notices are in /opt/openatp/_internal/*.dist-info.\n' \
    "$VERSION" > "$STAGE/usr/share/doc/openatp/copyright"
for script in preinst prerm postinst postrm; do
    # insert the shared running-instance check where a script asks for it
    awk -v check="packaging/linux/debian/running_check.sh" \
        '/#RUNNING_CHECK#/ { while ((getline line < check) > 0) print "        " line; next } { print }' \
        "packaging/linux/debian/$script" > "$STAGE/DEBIAN/$script"
    chmod 755 "$STAGE/DEBIAN/$script"
done
INSTALLED_KB=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
# What the bundle takes from the machine (smoke_test.sh lists ELF NEEDED entries the bundle does
# not carry): glibc, the GL/EGL driver stack and libxcb, which must match the machine's drivers
# and X server, so PyInstaller leaves them out on purpose; fonts through fontconfig's
# configuration. Wayland libraries are only needed in a Wayland session (Qt falls back to xcb).
DEPENDS="libc6 (>= $GLIBC_MIN), libgl1, libegl1, libdrm2, libxcb1, fontconfig-config"
RECOMMENDS="libwayland-client0, libwayland-cursor0, libwayland-egl1"
sed -e "s/@VERSION@/$DEB_VERSION/" -e "s/@INSTALLED_KB@/$INSTALLED_KB/" -e "s/@DEPENDS@/$DEPENDS/" \
    -e "s/@RECOMMENDS@/$RECOMMENDS/" packaging/linux/debian/control.in > "$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | xargs -0 md5sum > DEBIAN/md5sums)
DEB="$DIST/openatp_${DEB_VERSION}_amd64.deb"
dpkg-deb --root-owner-group -Z"$DEB_COMPRESS" -b "$STAGE" "$DEB" >/dev/null
ls -l "$DEB"

# -- 5. relocatable tarball -----------------------------------------------------------------------
step "tarball"
TARBALL="$DIST/openatp-$VERSION-linux-x86_64.tar.gz"
cp packaging/linux/openatp.desktop resources/icons/openatp.svg "$BUNDLE/"
cat > "$BUNDLE/INSTALL.txt" <<TXT
OpenATP $VERSION, relocatable bundle for Linux x86-64 (glibc >= $GLIBC_MIN).
Unpack anywhere (a USB stick, /opt, your home folder) and run:  ./openatp/openatp
No Python, no internet and no GPU needed. User data goes to ~/.local/share/OpenATP
(or \$OPENATP_USER_DIR), never into this folder, which may be read-only.
For a menu entry copy openatp.desktop to ~/.local/share/applications and set its Exec= line.
TXT
tar -C "$(dirname "$BUNDLE")" -czf "$TARBALL" openatp
rm "$BUNDLE/openatp.desktop" "$BUNDLE/openatp.svg" "$BUNDLE/INSTALL.txt"
ls -l "$TARBALL"

step "done: bundle $(du -sh "$BUNDLE" | cut -f1), installed size $((INSTALLED_KB / 1024)) MiB"
