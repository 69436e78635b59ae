#!/usr/bin/env bash
# Makes benchmarks/gpu/bundle/ (git-ignored), what the lent GPU machine needs and cannot fetch: it has PyTorch,
# transformers, PEFT and accelerate, no network, and a Python of its own. Run it here, where the package index is
# reachable, before asking for the machine; then run check.sh there with the bundle carried along:
#
#   bash benchmarks/gpu/prepare.sh
#   device run: command "bash benchmarks/gpu/check.sh", carry ["benchmarks/gpu/bundle"]
#
# The bundle: requirements.txt (what agentbolt.engine and agentbolt.trainer.trainer import beyond that image, pinned
# as installed in .venv: closure.py), wheels/ (those and their dependencies, as wheels for each CPython in
# PYTHONS, manylinux x86_64; dependencies pinned to .venv's versions where those have wheels), tokenizer/ (the
# SmolLM2 tokenizer, save_pretrained), manifest.json (what was bundled, the tokenizer's special ids).
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-.venv/bin/python}
PYTHONS=${PYTHONS:-"3.10 3.11 3.12 3.13 3.14"}
BUNDLE=benchmarks/gpu/bundle
LIMIT_MIB=48  # the device tool carries 64 MiB in all

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/wheels"

"$PY" benchmarks/gpu/closure.py > "$BUNDLE/requirements.txt"
echo "requirements beyond the GPU image: $(tr '\n' ' ' < "$BUNDLE/requirements.txt")"
"$PY" -m pip freeze --exclude-editable 2>/dev/null | grep '==' > "$BUNDLE/constraints.txt"

download() {  # download PYTHON_VERSION [pip options...]
    local version=$1
    shift
    "$PY" -m pip download --disable-pip-version-check --quiet --only-binary=:all: \
        --python-version "$version" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$BUNDLE/wheels" -r "$BUNDLE/requirements.txt" "$@" 2>&1 | grep -v "^WARNING: Location"
    local status=("${PIPESTATUS[@]}")  # called only as an `if` condition, so a failure does not end the script
    return "${status[0]}"
}
bundled=()
for version in $PYTHONS; do
    if download "$version" -c "$BUNDLE/constraints.txt"; then
        bundled+=("$version")
    elif download "$version"; then  # a pinned dependency has no wheel for this Python: take what resolves
        echo "python $version: .venv's pins do not all have wheels here; bundled the resolver's choice"
        bundled+=("$version")
    else
        echo "python $version: NOT bundled (no wheels for its requirements); check.sh cannot install there"
    fi
done
rm "$BUNDLE/constraints.txt"

"$PY" - "$BUNDLE" "${bundled[*]}" <<'PY'
import json, platform, sys
from pathlib import Path

import transformers

from agentbolt.models import load_tokenizer

bundle, pythons = Path(sys.argv[1]), sys.argv[2].split()
tokenizer = load_tokenizer("demo")
tokenizer.save_pretrained(bundle / "tokenizer")
manifest = {
    "requirements": (bundle / "requirements.txt").read_text().split(),
    "pythons": pythons,
    "wheels": sorted(p.name for p in (bundle / "wheels").glob("*.whl")),
    "tokenizer": {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    },
    "made_with": {"python": platform.python_version(), "transformers": transformers.__version__},
}
(bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
PY

size=$(du -sb "$BUNDLE" | cut -f1)
echo "bundle: $BUNDLE, $((size / 1024)) KiB ($(find "$BUNDLE/wheels" -name "*.whl" | wc -l) wheels for python ${bundled[*]})"
if [ "$size" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo "bundle is over ${LIMIT_MIB} MiB: the device tool would not carry it with room to spare" >&2
    exit 1
fi
