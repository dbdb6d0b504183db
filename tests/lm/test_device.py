import pytest
import torch

from app.lm.device import AUTO_BF16_MIN_HIDDEN, DeviceUnavailable, decode_dtype, fast_bf16, resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_cuda_is_a_clear_error():
    with pytest.raises(DeviceUnavailable, match=r"'cuda:1' was asked for but is not available \(available: cpu"):
        resolve_device("cuda:1")


def test_unknown_device_names_the_choices():
    with pytest.raises(DeviceUnavailable, match="use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_selected_when_present():
    assert resolve_device("cuda").type == "cuda"
    assert resolve_device("auto").type == "cuda"


def test_decode_precision_choice():
    cpu = torch.device("cpu")
    assert decode_dtype("fp32", cpu, 4096) == torch.float32
    assert decode_dtype("bf16", cpu, 8) == torch.bfloat16  # asked for: given, however small
    assert decode_dtype("auto", cpu, AUTO_BF16_MIN_HIDDEN - 1) == torch.float32  # overhead-bound: no gain
    big = torch.bfloat16 if fast_bf16(cpu) else torch.float32
    assert decode_dtype("auto", cpu, AUTO_BF16_MIN_HIDDEN) == big
