#!/usr/bin/env bash
# A directory for the linker of a CUDA build from NVIDIA's wheels: unversioned names for the
# wheels' libraries (they ship only libcublas.so.13 and the like), and, where no NVIDIA
# driver is installed, a stub libcuda.so. The stub plays the part of the toolkit's
# lib64/stubs/libcuda.so, which no wheel ships: it lets a machine without a GPU link the
# binary; at run time the driver's own libcuda.so.1 (same soname) is loaded instead, so the
# stub directory must not be on LD_LIBRARY_PATH when the binary runs.
#
# Usage: scripts/cuda-link-dir.sh CUDA_ROOT OUT_DIR CUDARC_RLIB
set -euo pipefail
root=${1:?CUDA_ROOT}
out=${2:?OUT_DIR}
rlib=${3:?the cudarc rlib whose driver symbols the stub defines}
mkdir -p "$out"
for lib in cudart cublas cublasLt curand nvrtc; do
    real=$(ls "$root/lib/lib$lib.so."* 2> /dev/null | grep -v builtins | sort | head -n 1 || true)
    [ -n "$real" ] && ln -sf "$real" "$out/lib$lib.so"
done
# The driver's link name (libcuda.so, from a development package) or, on a machine with
# only the driver, its runtime name libcuda.so.1 under the link name the linker looks for.
if ldconfig -p 2> /dev/null | grep -qE '^\s*libcuda\.so\s'; then
    echo "cuda-link-dir: linking against the installed driver's libcuda.so"
    rm -f "$out/libcuda.so"
    exit 0
fi
driver=$(ldconfig -p 2> /dev/null | awk '$1 == "libcuda.so.1" { print $NF; exit }')
if [ -n "$driver" ]; then
    echo "cuda-link-dir: linking against the installed driver ($driver)"
    ln -sf "$driver" "$out/libcuda.so"
    exit 0
fi
# One do-nothing function per driver entry point that cudarc declares.
nm -u "$rlib" 2> /dev/null | awk '{print $2}' | grep -E '^cu[A-Z]' | sort -u |
    sed 's/.*/int &(void) { return 999; }/' > "$out/cuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so" "$out/cuda-stub.c"
echo "cuda-link-dir: no NVIDIA driver here; linking against a stub libcuda.so ($(wc -l < "$out/cuda-stub.c") entry points)"
