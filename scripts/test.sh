#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), then lint, validate the napari manifest and run the
# whole test suite under a virtual screen (Xvfb), as CI does. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
echo "== ruff"
.venv/bin/ruff check src tests benchmarks scripts
echo "== npe2 validate"
.venv/bin/npe2 validate napari-unet
echo "== pytest"
# One BLAS/torch thread per core is plenty for the small test networks.
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-xcb}
exec xvfb-run -a -s "-screen 0 1600x1200x24" "$PY" -m pytest -p no:cacheprovider "$@"
