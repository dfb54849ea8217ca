#!/usr/bin/env bash
# One prepared GPU session: the test suite (without the end-to-end experiment tests) and the GPU
# benchmark suite, within 9 minutes of wall time, compile times included. Results go to $OUT
# (at most 8 files):
#
#   env.txt           GPU, driver, Python and package versions, JAX devices
#   pytest.log        the test phase's output (its four shards' logs in turn)
#   junit.xml         the test results (the shards' merged, with the totals)
#   bench.log         the benchmark phase's output
#   RESULTS-gpu.md    the generated GPU report (benchmarks/RESULTS-gpu.md)
#   results-gpu.json  its machine-readable results
#   summary.txt       each phase's exit status and wall time
#
# Usage, in the repository root of a host with a GPU, JAX with its CUDA plugin, torch with CUDA,
# and gradflow's dependencies (no network needed):
#
#   OUT=/some/dir bash benchmarks/gpu_session.sh
#   bash benchmarks/gpu_session.sh --dry-run     # here, on a CPU: the same phases at toy sizes
#
# Phase budgets (seconds, GNU timeout; a phase that runs out is interrupted with SIGINT, so pytest
# still writes its junit file and the benchmark keeps the workloads it finished):
#   GF_INSTALL_BUDGET (default 60), GF_TEST_BUDGET (270), GF_BENCH_BUDGET (210).
# Every phase runs whatever the previous one returned.
set -u

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-$(mktemp -d /tmp/gradflow-gpu-session.XXXXXX)}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONUNBUFFERED=1
export MPLBACKEND=Agg
export OPENBLAS_NUM_THREADS=1
# several pytest processes share the GPU: no process may take most of its memory up front
export XLA_PYTHON_CLIENT_PREALLOCATE=false

INSTALL_BUDGET="${GF_INSTALL_BUDGET:-60}"
TEST_BUDGET="${GF_TEST_BUDGET:-270}"
BENCH_BUDGET="${GF_BENCH_BUDGET:-210}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
T0=$(date +%s)

phase() {  # phase NAME STATUS SECONDS
    echo "$1: exit $2, $3 s (session at $(( $(date +%s) - T0 )) s)" | tee -a "$SUMMARY"
}

# --- 0. gradflow importable, and what the machine is ------------------------------------------
t=$(date +%s)
if ! "$PY" -c "import gradflow" 2>/dev/null; then
    timeout -k 10 "$INSTALL_BUDGET" "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . \
        > "$OUT/env.txt" 2>&1
fi
{
    date -u
    nvidia-smi 2>&1 | head -20
    "$PY" - <<'EOF'
import importlib.metadata as md, platform
print("python", platform.python_version())
for p in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "torch",
          "numpy", "pytest", "pytest-xdist", "hypothesis"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        pass
import jax
print("jax devices", jax.devices(), "backend", jax.default_backend())
import gradflow
print("gradflow", gradflow.__file__, "matmul precision", gradflow.config.matmul_precision())
EOF
} >> "$OUT/env.txt" 2>&1
phase setup $? $(( $(date +%s) - t ))

# --- 1. the test suite without tests/test_exp_* ------------------------------------------------
t=$(date +%s)
if [ "$DRY" = 1 ]; then
    TESTS=(tests/test_config.py tests/test_public_api.py)
else
    mapfile -t TESTS < <(ls tests/test_*.py | grep -v '^tests/test_exp_')
fi
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -p no:benchmark)
# four shards of whole files, run side by side (plain pytest processes: interrupted by the budget,
# each still writes its junit file, which pytest-xdist's controller does not), merged afterwards
SHARDS=$(mktemp -d)
pids=()
for i in 0 1 2 3; do
    files=()
    for j in "${!TESTS[@]}"; do
        [ $(( j % 4 )) = "$i" ] && files+=("${TESTS[$j]}")
    done
    [ ${#files[@]} = 0 ] && continue
    timeout -s INT -k 30 "$TEST_BUDGET" "${PYTEST[@]}" --junitxml="$SHARDS/junit-$i.xml" \
        "${files[@]}" > "$SHARDS/pytest-$i.log" 2>&1 &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
for f in "$SHARDS"/pytest-*.log; do echo "=== $(basename "$f")"; cat "$f"; done > "$OUT/pytest.log"
"$PY" - "$SHARDS" "$OUT/junit.xml" >> "$SUMMARY" 2>&1 <<'EOF2'
import glob, sys
import xml.etree.ElementTree as ET
root = ET.Element("testsuites")
totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for f in sorted(glob.glob(f"{sys.argv[1]}/junit-*.xml")):
    try:
        tree = ET.parse(f).getroot()
    except ET.ParseError as e:  # a shard killed before it wrote its file
        print(f"{f}: {e}", file=sys.stderr)
        continue
    for suite in tree.iter("testsuite"):
        root.append(suite)
        for k in totals:
            totals[k] += int(suite.get(k, 0))
for k, v in totals.items():
    root.set(k, str(v))
ET.ElementTree(root).write(sys.argv[2], encoding="utf-8", xml_declaration=True)
print("junit:", ", ".join(f"{v} {k}" for k, v in totals.items()))
EOF2
rm -rf "$SHARDS"
grep -E "(passed|failed|error|Interrupted|no tests ran)" "$OUT/pytest.log" | tail -n 8 \
    | tee -a "$SUMMARY"
phase tests "$status" $(( $(date +%s) - t ))

# --- 2. the GPU benchmark suite ----------------------------------------------------------------
t=$(date +%s)
if [ "$DRY" = 1 ]; then
    BENCH=(--device cpu --suite gpu --quick --out "$OUT/bench/RESULTS-gpu.md")
else
    BENCH=(--device gpu --repeats 3 --budget 8)
fi
# no further way starts after DEADLINE seconds, so the last one has time to finish
DEADLINE=$(( BENCH_BUDGET * 3 / 4 ))
timeout -s INT -k 20 "$BENCH_BUDGET" "$PY" -m benchmarks.run "${BENCH[@]}" \
    --deadline "$DEADLINE" > "$OUT/bench.log" 2>&1
phase bench $? $(( $(date +%s) - t ))

# --- 3. the generated report -------------------------------------------------------------------
if [ "$DRY" = 1 ]; then SRC="$OUT/bench"; else SRC=benchmarks; fi
for f in RESULTS-gpu.md results-gpu.json; do
    if [ -f "$SRC/$f" ]; then
        [ "$SRC" != "$OUT" ] && cp "$SRC/$f" "$OUT/$f"
    else
        echo "missing: $SRC/$f" | tee -a "$SUMMARY"
    fi
done
rm -rf "$OUT/bench"
phase total 0 $(( $(date +%s) - T0 ))
ls -l "$OUT" | tee -a "$SUMMARY"
