#!/usr/bin/env bash
# The wheel as a user gets it: built from this checkout, installed with its core dependencies only (no
# extra) in a fresh virtual environment, and `emostore demo` run from it outside the checkout.
#   scripts/check_wheel.sh [PYTHON]      (PYTHON: one with the `build` package; TORCH=... as for make)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
work="$(mktemp -d -t emostore-wheel-XXXXXX)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

"$PYTHON" -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
if grep -i "deprecat" "$work/build.log"; then
    echo "the build warned that something is deprecated (above)"; exit 1
fi
echo "built $(cd "$work/dist" && echo *) in $((SECONDS - start)) s"

python3 -m venv "$work/venv"
# --no-compile: modules are compiled when first imported, not all of them (transformers, scipy...) at install
"$work/venv/bin/python" -m pip install --quiet --no-compile "$TORCH"
"$work/venv/bin/python" -m pip install --quiet --no-compile "$work"/dist/*.whl
echo "installed in a fresh virtual environment in $((SECONDS - start)) s"

cd "$work"  # outside the checkout: only the installed package can be imported
"$work/venv/bin/python" -c "import emostore, sys; p = emostore.__file__; print('emostore from', p); \
sys.exit(0 if p.startswith('$work/venv/') else 1)"
"$work/venv/bin/emostore" demo --dir "$work/demo" --device cpu | tee "$work/demo.log"
grep -q "We won the final" "$work/demo.log"
echo "wheel check passed in $((SECONDS - start)) s"
