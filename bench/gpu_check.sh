#!/usr/bin/env bash
# One GPU check for when a GPU is lent: GPU tests, then the GPU benchmark, figures to one JSON file.
#
#   bash bench/gpu_check.sh [OUT.json]        # default: gpu-figures.json (in the current directory)
#
# Installs the GPU extra (pip install -e '.[gpu,test]') only when CuPy does not import. Runs
# tests/unit/test_gpu.py and tests/unit/test_gpu_path.py, then bench/bench_detector.py --gpu --sizes 1024
# --levels 16 (single tiles, batches of 1024^2 tiles, one 16384^2 tile with 64 levels: time and GPU
# memory). Every step has a timeout; the whole check stays under 5 minutes on one GPU.
# Environment: PYTHON (default: python3), PIP_TIMEOUT, TEST_TIMEOUT, BENCH_TIMEOUT (seconds);
# NO_INSTALL=1 never installs (a dry run on a machine without a GPU).
# Exit status: 0 when the tests and the benchmark passed, 1 otherwise; the JSON is written either way.
set -uo pipefail

out=$(realpath -m -- "${1:-gpu-figures.json}")
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." || exit 1
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

install_rc=0
if [ "${NO_INSTALL:-0}" != 1 ] && ! "$py" -c 'import cupy' 2>/dev/null; then
    echo "gpu_check: installing the GPU extra" >&2
    timeout "${PIP_TIMEOUT:-90}" "$py" -m pip install -q -e '.[gpu,test]' >"$work/pip.log" 2>&1
    install_rc=$?
fi

echo "gpu_check: GPU tests" >&2
timeout "${TEST_TIMEOUT:-60}" "$py" -m pytest -q -p no:cacheprovider tests/unit/test_gpu.py tests/unit/test_gpu_path.py \
    --junitxml="$work/junit.xml" >"$work/pytest.log" 2>&1
tests_rc=$?
tail -n 15 "$work/pytest.log" >&2

echo "gpu_check: GPU benchmark" >&2
timeout "${BENCH_TIMEOUT:-110}" "$py" bench/bench_detector.py --gpu --sizes 1024 --levels 16 --repeat 5 \
    --skimage-max 0 --json "$work/bench.json" >"$work/bench.log" 2>&1
bench_rc=$?
tail -n 20 "$work/bench.log" >&2

INSTALL_RC=$install_rc TESTS_RC=$tests_rc BENCH_RC=$bench_rc WORK=$work OUT=$out "$py" - <<'EOF'
import json, os, platform, subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

work = Path(os.environ["WORK"])
figures = {"install_rc": int(os.environ["INSTALL_RC"]), "tests_rc": int(os.environ["TESTS_RC"]), "bench_rc": int(os.environ["BENCH_RC"])}
figures["python"] = platform.python_version()
try:
    import cupy
    figures["cupy"] = cupy.__version__
    figures["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
except Exception as exc:  # no CuPy or no device: say so in the figures
    figures["cupy"] = f"unavailable: {exc}"
try:
    figures["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.TimeoutExpired):
    figures["nvidia_smi"] = None
junit = work / "junit.xml"
if junit.is_file():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    figures["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    figures["tests"]["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
bench = work / "bench.json"
figures["bench"] = json.loads(bench.read_text()) if bench.is_file() else None
if figures["bench"] is None:
    figures["bench_log_tail"] = (work / "bench.log").read_text(errors="replace")[-3000:] if (work / "bench.log").is_file() else ""
Path(os.environ["OUT"]).write_text(json.dumps(figures, indent=1))
print(f"gpu_check: figures in {os.environ['OUT']}")
EOF

[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
