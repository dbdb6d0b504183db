"""The BLAS that torch itself multiplies with (Intel MKL, linked into torch's x86-64 CPU builds),
called from compiled code without Python in between.

A step of a large batch is a few matrix products with compiled code between them. Driven from
Python, each product was a torch call and each call a release and a retake of the GIL: with the
HTTP event loop running Python a fifth of the time, the decoding thread waited for the GIL at
almost every step (measured: 28% of its time off the CPU under 64 clients while a core stood
idle). Called here through the function's address, the products run inside one compiled call
of many steps (fastpath_large), which holds no GIL from its first step to its last.

- `sgemm_` (float32): what torch.mm calls on the CPU, so the products are torch's, bit for bit.
- `cblas_gemm_bf16bf16f32` (bfloat16 inputs, float32 sums and results; AMX or AVX512-BF16
  where the CPU has them): decode.bf16_product's product, rounded to bfloat16 afterwards.

`usable(dtype)` says where the callers take them: float32 wherever torch has MKL (its own
products are MKL's there, on any CPU), bfloat16 only on Intel's CPUs (MKL's bfloat16 kernels
are Intel's: on other CPUs with AVX512-BF16, such as AMD's, oneDNN's are the ones that use it).
Elsewhere the callers keep torch's own calls.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import torch

ROW_MAJOR, NO_TRANSPOSE = 101, 111  # CBLAS_LAYOUT, CBLAS_TRANSPOSE


@functools.cache
def _addresses() -> tuple[int, int] | None:
    """(cblas_gemm_bf16bf16f32, sgemm_) in torch's CPU library, or None where it has no MKL."""
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        names = ("cblas_gemm_bf16bf16f32", "sgemm_")
        found = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names]
    except (OSError, AttributeError):
        return None
    if not all(found):
        return None
    return found[0], found[1]  # type: ignore[return-value]


def available() -> bool:
    return _addresses() is not None


@functools.cache
def _intel() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


def usable(dtype: torch.dtype) -> bool:
    """Whether products in `dtype` (float32, bfloat16) go to MKL here (the module says where)."""
    if dtype == torch.float32:
        return available()
    return dtype == torch.bfloat16 and available() and _intel()


@functools.cache
def _gemm_bf16_from_python():
    found = _addresses()
    assert found is not None
    i32, f32, ptr = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    proto = ctypes.CFUNCTYPE(None, i32, i32, i32, i32, i32, i32, f32, ptr, i32, ptr, i32, f32, ptr, i32)
    return proto(found[0])


def gemm_bf16(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (M, N) float32 = a (M, K) @ b (K, N), both bfloat16 with contiguous rows (the same
    function as the compiled code calls: see fastpath_large)."""
    (m, k), n = a.shape, b.shape[1]
    assert a.dtype == b.dtype == torch.bfloat16 and out.dtype == torch.float32 and out.shape == (m, n)
    assert a.stride(1) == b.stride(1) == out.stride(1) == 1
    _gemm_bf16_from_python()(
        ROW_MAJOR, NO_TRANSPOSE, NO_TRANSPOSE, m, n, k, 1.0,
        a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0), 0.0, out.data_ptr(), out.stride(0),
    )  # fmt: skip
    return out


def functions() -> np.ndarray:
    """The two functions' addresses as compiled code takes them: int64[2] (bf16 product, float32 product)."""
    found = _addresses()
    if found is None:
        raise RuntimeError("this torch has no MKL")
    return np.array(found, np.int64)
