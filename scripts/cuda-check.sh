#!/usr/bin/env bash
# The checks that need a GPU: the CUDA tests, bench/serve.py and bench/generation.py on CUDA. Each
# part has a time limit and its own files in OUT_DIR (PART.out, PART.log, a line in summary.txt),
# so a part that fails leaves the others' results.
#
#   scripts/cuda-check.sh OUT_DIR [PART ...]     PART: tests, serve, generation (default: all three)
#
# The full run takes about 8 minutes on one H200 (16 cores): tests 21 s, serve 110 s, generation 365 s.
#
# Run it where the project's packages are importable (`make install`, or the image). The benches
# read CORPUS (default ../shared/corpora/shakespeare_train.txt).
set -u
out=$(realpath -m "${1:?usage: scripts/cuda-check.sh OUT_DIR [tests] [serve] [generation]}")
shift
[ $# -gt 0 ] || set -- tests serve generation
corpus=$(realpath -m "${CORPUS:-../shared/corpora/shakespeare_train.txt}")
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the benches import app/ from a checkout not installed

{
    date -u
    nvidia-smi -L
    lscpu | grep -m1 'Model name'
    "$py" -c 'import numba, numpy, torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "numba", numba.__version__, "numpy", numpy.__version__)'
} >>"$out/machine.txt" 2>&1

part() {  # part NAME SECONDS COMMAND...
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" >"$out/$name.out" 2>"$out/$name.log"
    echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

# each part's time limit, and extra arguments (word-split), can be set: e.g. SERVE_ARGS="--clients 64"
for p in "$@"; do
    case $p in
    tests) part tests "${TESTS_SECONDS:-180}" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        tests/lm/test_cuda_graphs.py tests/lm/test_device.py tests/lm/test_decode.py ${TESTS_ARGS:-} ;;
    serve) part serve "${SERVE_SECONDS:-240}" "$py" bench/serve.py --device cuda --corpus "$corpus" \
        --client-procs 8 ${SERVE_ARGS:-} ;;
    generation) part generation "${GENERATION_SECONDS:-420}" "$py" bench/generation.py --device cuda \
        --corpus "$corpus" ${GENERATION_ARGS:-} ;;
    *) echo "unknown part: $p" >&2 && exit 2 ;;
    esac
done
