#!/usr/bin/env bash
# Set up napari-unet on a fresh Debian machine with Python 3.11: the Debian libraries napari needs
# for a (virtual) screen, a virtual environment in .venv, the CPU build of torch 2.13.0 and the
# plugin itself with its test tools. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${NAPARI_UNET_VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEB_PACKAGES=(xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
    libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# torch first and pinned: 2.13.0 is a CPU build from local disk; an unpinned torch would pull CUDA.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[testing]"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, napari; print("torch", torch.__version__, "napari", napari.__version__)'))"
