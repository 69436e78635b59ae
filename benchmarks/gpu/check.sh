#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one GPU, no network, an image with only PyTorch, transformers, PEFT
# and accelerate): installs agentbolt's missing runtime dependencies from the bundle prepare.sh made (only when
# the import of the engine and the trainer fails, never from the network), then runs check.py under a hard
# timeout. Figures go to $OUT/gpu_check.json (default benchmarks/results/), the output also to gpu_check.log.
#
#   bash benchmarks/gpu/prepare.sh                      # here, first
#   device run: command "bash benchmarks/gpu/check.sh", carry ["benchmarks/gpu/bundle"], timeout_s 540
#
# Extra arguments go to check.py (e.g. --device cpu --size tiny); TIMEOUT_S (default 420) bounds check.py.
set -u
cd "$(dirname "$0")/../.." || exit 1

BUNDLE=benchmarks/gpu/bundle
PY=${PYTHON:-$(command -v python || command -v python3)}
OUT_DIR=${OUT:-benchmarks/results}
TIMEOUT_S=${TIMEOUT_S:-420}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"  # agentbolt from this tree, never installed
export PYTHONUNBUFFERED=1

imports() {  # prints the import error's last line and fails when the engine or the trainer cannot be imported
    local output
    output=$(timeout 180 "$PY" -c "import agentbolt.engine, agentbolt.trainer.trainer" 2>&1) && return 0
    echo "${output##*$'\n'}"
    return 1
}

install_bundle() {  # prints how the bundle went in; fails when it did not
    local pip=("$PY" -m pip install --quiet --disable-pip-version-check --no-index
        --find-links "$BUNDLE/wheels" -r "$BUNDLE/requirements.txt")
    if [ ! -f "$BUNDLE/requirements.txt" ]; then
        echo "no bundle at $BUNDLE: run benchmarks/gpu/prepare.sh first and carry $BUNDLE"
        return 1
    fi
    if "${pip[@]}" >&2; then
        echo "installed $BUNDLE/requirements.txt into the environment"
    elif "${pip[@]}" --target "$BUNDLE/site" >&2; then  # a read-only or externally managed environment
        echo "installed $BUNDLE/requirements.txt into $BUNDLE/site (on PYTHONPATH)"
    else
        echo "pip install from $BUNDLE failed"
        return 1
    fi
}

main() {
    echo "python: $PY ($("$PY" -V 2>&1)); $(nproc) CPU cores"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    local install="not needed: the imports work" error
    if ! error=$(imports); then
        echo "the engine and trainer imports fail here ($error): installing from the bundle"
        install=$(install_bundle) || true
        echo "$install"
        case $install in *"$BUNDLE/site"*) export PYTHONPATH="$PYTHONPATH:$BUNDLE/site" ;; esac
        if error=$(imports); then
            echo "imports work now"
        else
            echo "imports STILL FAIL ($error): the engine and trainer phases will fail, the baseline may still run"
        fi
    fi
    export GPU_CHECK_BUNDLE_INSTALL=$install
    timeout -k 15 "$TIMEOUT_S" "$PY" benchmarks/gpu/check.py --out "$OUT_DIR/gpu_check.json" "$@"
    local status=$?
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then
        echo "check.py: HARD TIMEOUT after ${TIMEOUT_S} s; $OUT_DIR/gpu_check.json holds the phases that finished"
    fi
    return $status
}

mkdir -p "$OUT_DIR"
main "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
