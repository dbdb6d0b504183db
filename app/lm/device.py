"""Choosing the torch device: auto | cpu | cuda | cuda:N | mps, with a clear error when absent."""

from __future__ import annotations

import re

import torch


class DeviceUnavailable(RuntimeError):
    """The device asked for does not exist on this machine."""


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


AUTO_BF16_MIN_HIDDEN = 128  # below this, call overhead (not multiply-adds) dominates a step: bf16 buys nothing


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are native here (AVX512-BF16/AMX CPUs, Ampere+ GPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def decode_dtype(precision: str, device: torch.device, hidden_size: int) -> torch.dtype:
    """The dtype of decoding's matrix products: fp32 | bf16 | auto (bf16 where it is native and the
    model is big enough for the products to matter, else fp32)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and fast_bf16(device) and hidden_size >= AUTO_BF16_MIN_HIDDEN:
        return torch.bfloat16
    return torch.float32


def resolve_device(spec: str) -> torch.device:
    """`auto` picks cuda, else mps, else cpu; anything named must exist or DeviceUnavailable says so."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    available = ", ".join(available_devices())
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match:
        index = int(match.group(1) or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"device {spec!r} was asked for but is not available (available: {available})")
        return torch.device("cuda", index)
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceUnavailable(f"device 'mps' was asked for but is not available (available: {available})")
        return torch.device("mps")
    raise DeviceUnavailable(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps (available: {available})")
