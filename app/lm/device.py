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
