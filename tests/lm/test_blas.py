"""MKL's products as the large batch path calls them: where they are used, and what they give."""

import pytest
import torch

from app.lm import blas

needs_mkl = pytest.mark.skipif(not blas.available(), reason="this torch has no MKL")


@needs_mkl
def test_float32_goes_to_mkl_on_any_cpu_bfloat16_on_intel_only(monkeypatch):
    """torch's own float32 products are MKL's wherever it has MKL; MKL's bfloat16 kernels are
    Intel's, and elsewhere (AMD's AVX512-BF16) oneDNN's use the CPU's bf16 instructions."""
    monkeypatch.setattr(blas, "_intel", lambda: False)
    assert blas.usable(torch.float32) and not blas.usable(torch.bfloat16)
    monkeypatch.setattr(blas, "_intel", lambda: True)
    assert blas.usable(torch.float32) and blas.usable(torch.bfloat16)
    assert not blas.usable(torch.float16)


def test_nothing_goes_to_mkl_where_torch_has_none(monkeypatch):
    monkeypatch.setattr(blas, "_addresses", lambda: None)
    assert not blas.available() and not blas.usable(torch.float32) and not blas.usable(torch.bfloat16)
    with pytest.raises(RuntimeError, match="no MKL"):
        blas.functions()


@needs_mkl
def test_the_bf16_product_sums_in_float32():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 512, generator=gen).to(torch.bfloat16)
    b = torch.randn(512, 1024, generator=gen).to(torch.bfloat16)
    out = blas.gemm_bf16(a, b, torch.empty(64, 1024))
    exact = a.double() @ b.double()
    assert (out.double() - exact).abs().max() < 1e-3  # float32 sums of 512 products (bf16 would be ~0.1)
    with pytest.raises(AssertionError):
        blas.gemm_bf16(a.float(), b, torch.empty(64, 1024))  # both bfloat16, or nothing
