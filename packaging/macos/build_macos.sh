#!/usr/bin/env bash
# macOS: OpenATP.app in a .dmg. UNTESTED: written on Linux, where it cannot run;
# .github/workflows/package.yml runs it on macos-14 (Apple silicon, CPU/MPS torch from PyPI).
#
# User data goes to ~/Library/Application Support/OpenATP (core/paths.py); dragging the app
# to the bin removes only the app.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
VENV=packaging/.venv-build
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0" "pyinstaller==6.22.3" "setuptools>=68" wheel build
"$VENV/bin/python" -m build --wheel --no-isolation --outdir build/package/wheel .
"$VENV/bin/pip" install -q build/package/wheel/openatp-*.whl
VERSION=$("$VENV/bin/python" -c 'from core import __version__; print(__version__)')
mkdir -p build/package/pyi dist
(cd build/package/pyi && "$ROOT/$VENV/bin/pyinstaller" --noconfirm --distpath dist --workpath work \
    "$ROOT/packaging/openatp.spec")
APP=build/package/pyi/dist/OpenATP.app
# Code signing and notarisation: placeholders; set these in CI secrets to enable.
if [ -n "${MACOS_SIGN_IDENTITY:-}" ]; then
    codesign --deep --force --options runtime --sign "$MACOS_SIGN_IDENTITY" "$APP"
    # xcrun notarytool submit ... --keychain-profile "$MACOS_NOTARY_PROFILE" --wait; xcrun stapler staple "$APP"
fi
hdiutil create -volname "OpenATP $VERSION" -srcfolder "$APP" -ov -format UDZO "dist/openatp-$VERSION-macos.dmg"
