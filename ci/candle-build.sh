#!/usr/bin/env bash
# Builds (or checks) sparse-attn's `candle` feature without a CUDA toolkit
# and without a GPU, from pip wheels only.
#
#   ci/candle-build.sh check     cargo check -p sparse-attn --features candle
#                                (+ the example): nvcc only, nothing linked
#   ci/candle-build.sh example   cargo build --release of the example
#                                candle_msa_step; the binary is copied to
#                                target/candle/dist/ (and $SPARSE_ATTN_CANDLE_DIST
#                                if set)
#
# Why: candle-core's `cuda` feature builds candle-kernels, whose build script
# runs nvcc (PTX for most kernels, a static library of sm_XX machine code for
# the MoE / GGUF ones, linked with -lcudart), and turns on cudarc's
# `dynamic-linking`, so the program is linked against libcuda, libnvrtc,
# libcublas, libcublasLt, libcurand (and candle-kernels' libcudart).
#
# What it uses, all under $CANDLE_CUDA (default target/candle-cuda):
#   - the CUDA 13.0 pip wheels, pinned to one release (nvcc, crt, nvvm,
#     runtime headers + libcudart, cccl headers, and for linking nvrtc,
#     cublas, curand): `pip install --target`, so nothing else on the
#     machine changes (an unpinned nvidia-cuda-nvcc pulls the newest crt and
#     nvvm, whose PTX a CUDA 13.0 driver may refuse);
#   - lib/libX.so -> libX.so.N links, which `-lX` needs;
#   - lib/stubs/libcuda.so: a stub of the driver library (soname
#     libcuda.so.1, every cu* function cudarc declares, each returning
#     CUDA_ERROR_STUB_LIBRARY), for linking only: at run time the driver's
#     own libcuda.so.1 is loaded. No wheel ships the driver library.
#   - CUDA_HOME points cudarc's and cudaforge's searches there; nvcc comes
#     first on PATH; CUDA_COMPUTE_CAP=90 (H100/H200; no nvidia-smi here).
#
# At run time the binary needs the driver (libcuda.so.1) and the CUDA 13
# libraries libnvrtc.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libcudart.so.13 on the loader's path (PyTorch's cu13
# wheels carry them; see the README's candle section).
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
mode="${1:-example}"

export CANDLE_CUDA="${CANDLE_CUDA:-$PWD/target/candle-cuda}"
cu="$CANDLE_CUDA/nvidia/cu13"
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
)
if [ "$mode" = example ]; then
  wheels+=(nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35)
fi
stamp="$CANDLE_CUDA/.installed-$mode"
if [ ! -f "$stamp" ]; then
  echo "installing ${wheels[*]} into $CANDLE_CUDA"
  pip_install() { python3 -m pip install -q --no-deps --upgrade --target "$CANDLE_CUDA" "$@"; }
  # A Debian-managed python3 refuses plain pip installs (PEP 668).
  pip_install "${wheels[@]}" || pip_install --break-system-packages "${wheels[@]}"
  touch "$stamp"
fi
"$cu/bin/nvcc" --version | tail -n 2

export PATH="$cu/bin:$PATH"
export CUDA_HOME="$cu"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
target_dir="$PWD/target/candle"

if [ "$mode" = check ]; then
  cargo check --locked -p sparse-attn --features candle --examples --target-dir "$target_dir"
  exit 0
fi
[ "$mode" = example ] || { echo "usage: $0 [check|example]" >&2; exit 2; }

# -lX needs libX.so; the wheels ship only libX.so.N.
for so in "$cu"/lib/lib{nvrtc,cublas,cublasLt,curand,cudart}.so.*; do
  case "$so" in *alt* | *builtins*) continue ;; esac
  ln -sf "$(basename "$so")" "${so%.so.*}.so"
done

# The driver stub: every cu* function that cudarc's bindings declare (a
# superset of what the program calls; the linker records only those).
cudarc_src=$(cargo metadata --locked --format-version 1 --manifest-path host/Cargo.toml |
  python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')
mkdir -p "$cu/lib/stubs"
grep -ohE '^\s+fn cu[A-Z][A-Za-z0-9_]*\(' "$cudarc_src/src/driver/sys/mod.rs" |
  sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
  awk '{ printf "int %s(void) { return 34; }\n", $1 }' >"$cu/lib/stubs/libcuda_stub.c"
cc -shared -fPIC -o "$cu/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$cu/lib/stubs/libcuda_stub.c"

cargo build --locked --release -p sparse-attn --features candle --example candle_msa_step --target-dir "$target_dir"
bin="$target_dir/release/examples/candle_msa_step"
mkdir -p "$target_dir/dist"
cp "$bin" "$target_dir/dist/"
if [ -n "${SPARSE_ATTN_CANDLE_DIST:-}" ]; then
  mkdir -p "$SPARSE_ATTN_CANDLE_DIST"
  cp "$bin" "$SPARSE_ATTN_CANDLE_DIST/"
fi
echo "built $bin"
echo "needs at run time (DT_NEEDED):"
readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/  \1/p'
