#!/usr/bin/env bash
# GPU validation of the allocator, for ONE NVIDIA GPU machine with CUDA PyTorch (no network needed).
#
#   tools/gpu_check.sh            # from anywhere; PYTHON=/path/to/python to choose the interpreter
#
# 1. builds libhybrid_alloc.so with the CUDA backend and hybrid_alloc._core (cmake, into build/gpu, installed
#    into ./hybrid_alloc), checks the CUDA backend loads, and compiles the PyTorch hook bridge (cached);
# 2. runs the GPU tests (tests/gpu: MemPool mode, global mode in a fresh process, record_stream, CUDA graph
#    capture, a 1 GiB slab seen by NVML/cuMemGetInfo) and the host-backend allocator tests;
# 3. with vLLM installed, starts a tiny hybrid engine three times (plugin in mempool mode; global mode eager
#    and with CUDA graphs: tests/gpu/gpu_cases.py case_vllm_global), four times with prefix caching on and off
#    (tiny Mamba2 and GDN hybrids: case_vllm_prefix_caching); with 2+ GPUs and Ray, twice more with
#    vLLM's Ray executor and PP=2, stock and plugin, on a Ray head it starts (case_vllm_ray_pp2);
# 4. benchmarks hybrid_alloc vs PyTorch's caching allocator vs cudaMallocAsync (tests/gpu/bench_gpu.py)
#    and prints a short table last.
# Budget: under 8 minutes without vLLM, 13 more with it, up to 13 more with Ray (each step has its own timeout). Exit code: 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
START=$SECONDS
STATUS=0
SUMMARY=()

step() { printf '\n== %s  [%ds]\n' "$*" $((SECONDS - START)); }
record() {  # record NAME RC
  if [ "$2" -eq 0 ]; then SUMMARY+=("PASS  $1"); else SUMMARY+=("FAIL  $1 (rc $2)"); STATUS=1; fi
}

step "environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)'; then
  echo "gpu_check: $PY has no CUDA PyTorch or sees no GPU"
  # HYBRID_ALLOC_GPU_CHECK_FORCE=1 goes on anyway (to test this script on a CPU machine: GPU steps fail/skip)
  [ "${HYBRID_ALLOC_GPU_CHECK_FORCE:-0}" = 1 ] || exit 2
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "-")'

step "build (cmake, CUDA backend + _core)"
CUDA_INC=""
for d in "${CUDA_HOME:-/usr/local/cuda}/include" /usr/local/cuda/include \
         $("$PY" -c 'import glob, os, torch; s = os.path.dirname(os.path.dirname(torch.__file__)); print(" ".join(glob.glob(s + "/nvidia/*/include") + glob.glob(s + "/triton/backends/nvidia/include")))' 2>/dev/null); do
  if [ -f "$d/cuda.h" ]; then CUDA_INC=$d; break; fi
done
echo "cuda.h: ${CUDA_INC:-not found (the CUDA backend will be missing)}"
mkdir -p build
timeout 240 cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release -DHYBRID_ALLOC_BUILD_PYTHON=ON \
  -DPython_EXECUTABLE="$(command -v "$PY")" ${CUDA_INC:+-DHA_CUDA_INCLUDE_DIR="$CUDA_INC"} >build/gpu-configure.log 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then tail -30 build/gpu-configure.log; else grep -h "hybrid_alloc:" build/gpu-configure.log; fi
if [ "$rc" -eq 0 ]; then
  timeout 240 cmake --build build/gpu -j "$(nproc)" >build/gpu-build.log 2>&1
  rc=$?
  [ "$rc" -ne 0 ] && tail -30 build/gpu-build.log
fi
[ "$rc" -eq 0 ] && { cmake --install build/gpu --prefix "$ROOT" >/dev/null; rc=$?; }
record "build" "$rc"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

step "CUDA backend loads"
HYBRID_ALLOC_BACKEND=cuda timeout 60 "$PY" - <<'EOF'
from hybrid_alloc import allocator as a
print("library", a.library_path(), "backend", a.backend_name())
assert a.backend_name() == "cuda", a.last_error()
p = a.slab_alloc(64 << 20, "probe", "kv_cache"); a.slab_free(p); a.empty_cache()
print("64 MiB slab ok; stats:", a.stats()["arena"])
EOF
record "CUDA backend" $?

step "PyTorch hook bridge (compiled once, cached in TORCH_EXTENSIONS_DIR)"
timeout 300 "$PY" - <<'EOF'
from hybrid_alloc import allocator as a
import torch
a.build_bridge(verbose=False)
alloc = a.pluggable(hooks="require")
print("live hooks:", ", ".join(a.live_hooks()))
assert a.live_hooks() == a.ALL_HOOKS
EOF
record "hook bridge" $?

step "tests (GPU + host backend)"
timeout 330 "$PY" -m pytest -q -rsx -p no:cacheprovider -k "not vllm_engine_global_mode and not vllm_engine_ray_pp2 and not vllm_engine_prefix_caching" tests/gpu \
  tests/test_allocator_abi.py tests/test_allocator_module.py tests/test_allocator_tools.py 2>&1 | tail -25
record "pytest" "${PIPESTATUS[0]}"

step "vLLM engine: the plugin in global mode, eager and with CUDA graphs (skipped without vLLM)"
HYBRID_ALLOC_BACKEND=cuda timeout 420 "$PY" tests/gpu/gpu_cases.py vllm_global 2>&1 | tail -30
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 3 ]; then SUMMARY+=("SKIP  vLLM global mode (vLLM not importable)"); else record "vLLM global mode" "$rc"; fi

step "vLLM engine: prefix caching on natural pages, Mamba2 float32 + GDN bf16 (skipped without vLLM)"
HYBRID_ALLOC_BACKEND=cuda timeout 360 "$PY" tests/gpu/gpu_cases.py vllm_prefix_caching 2>&1 | tail -30
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 3 ]; then SUMMARY+=("SKIP  vLLM prefix caching (vLLM not importable)"); else record "vLLM prefix caching" "$rc"; fi

step "vLLM engine: PP=2 over two GPUs with the Ray executor (skipped without 2 GPUs, vLLM or Ray)"
RAY_CLI=("$PY" -c 'import sys; from ray.scripts.scripts import main; sys.argv[0] = "ray"; sys.exit(main())')
if "$PY" -c 'import sys, ray, vllm, torch; sys.exit(0 if torch.cuda.device_count() >= 2 else 1)' 2>/dev/null; then
  # a head whose raylet has no HYBRID_ALLOC (like a node nobody prepared): the workers get the plugin's
  # variables only through the driver's runtime_env (tests/gpu/gpu_cases.py case_vllm_ray_pp2)
  env -u HYBRID_ALLOC -u HYBRID_ALLOC_REPORT_DIR timeout 120 "${RAY_CLI[@]}" start --head --num-gpus=2 \
    --disable-usage-stats >build/ray-start.log 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -20 build/ray-start.log
  else
    RAY_ADDRESS=auto HYBRID_ALLOC_BACKEND=cuda timeout 600 "$PY" tests/gpu/gpu_cases.py vllm_ray_pp2 2>&1 | tail -30
    rc=${PIPESTATUS[0]}
  fi
  timeout 60 "${RAY_CLI[@]}" stop >/dev/null 2>&1
  if [ "$rc" -eq 3 ]; then SUMMARY+=("SKIP  vLLM Ray PP=2 (see above)"); else record "vLLM Ray PP=2" "$rc"; fi
else
  SUMMARY+=("SKIP  vLLM Ray PP=2 (needs 2+ GPUs, vLLM and Ray)")
fi

step "benchmark"
BENCH_OUT=$(timeout 200 "$PY" tests/gpu/bench_gpu.py --pairs 20000 --timeout 60 2>&1)
rc=$?
record "benchmark" $rc

step "summary  [total ${SECONDS}s]"
printf '%s\n' "${SUMMARY[@]}"
echo "$BENCH_OUT" | tail -8
exit $STATUS
