"""Checkpoints in model_store/: <name>.safetensors (weights) + <name>.json (metadata), written atomically.

Weights never travel as pickle: safetensors holds only tensors, JSON holds everything else.
The JSON records the weights' SHA-256, so a weights file that does not belong to its
metadata (a crash between the two writes, a copy gone wrong) is caught at load time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save

from app.lm.model import CharRNN, ModelConfig
from app.lm.vocab import Vocab

FORMAT_VERSION = 1
ACTIVE_FILE = ".active"  # names may not start with a dot, so this never collides with a model
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class StoreError(Exception):
    """Base of the errors below."""


class InvalidModelName(StoreError, ValueError):
    pass


class ModelNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CorruptCheckpoint(StoreError):
    pass


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidModelName(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..'"
        )
    return name


@dataclass
class Checkpoint:
    name: str
    model: CharRNN
    vocab: Vocab
    meta: dict


def _atomic_write(path: Path, payload: bytes) -> None:
    """Temporary file in the same directory, fsync, rename: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


class ModelStore:
    """A directory of named checkpoints, one of them active."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock = threading.Lock()  # serialises writers within this process
        self._verified: set[tuple] = set()

    def _paths(self, name: str) -> tuple[Path, Path]:
        validate_name(name)
        return self.root / f"{name}.safetensors", self.root / f"{name}.json"

    def _optim_path(self, name: str) -> Path:
        return self.root / f"{validate_name(name)}.optim.safetensors"

    def exists(self, name: str) -> bool:
        return self._paths(name)[1].is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.glob("*.json"):
            name = p.name[: -len(".json")]
            if NAME_PATTERN.fullmatch(name) and ".." not in name:
                found.append(name)
        return sorted(found)

    def save(
        self,
        name: str,
        model: CharRNN,
        vocab: Vocab,
        *,
        training: dict | None = None,
        metrics: dict | None = None,
        optimizer_state: dict | None = None,
        step: int = 0,
    ) -> dict:
        """Writes weights (and optimizer state, for resuming), then metadata naming their hashes.
        Returns the metadata."""
        weights_path, meta_path = self._paths(name)
        optim_payload, optim_meta = None, None
        if optimizer_state is not None:
            optim_tensors, groups = flatten_optimizer_state(optimizer_state)
            optim_payload = save(optim_tensors) if optim_tensors else save({"empty": torch.zeros(0)})
            optim_meta = {
                "file": self._optim_path(name).name,
                "sha256": hashlib.sha256(optim_payload).hexdigest(),
                "param_groups": groups,
            }
        if model.config.vocab_size != vocab.size:
            raise ValueError(f"model has {model.config.vocab_size} outputs but the vocabulary has {vocab.size}")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        payload = save(tensors, metadata={"format_version": str(FORMAT_VERSION)})
        meta = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_config": model.config.to_json(),
            "vocab": vocab.to_json(),
            "training": training or {},
            "metrics": metrics or {},
            "num_parameters": model.num_parameters(),
            "weights_file": weights_path.name,
            "weights_sha256": hashlib.sha256(payload).hexdigest(),
            "weights_bytes": len(payload),
            "step": step,
            "optimizer": optim_meta,
        }
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            _atomic_write(weights_path, payload)
            if optim_payload is not None:
                _atomic_write(self._optim_path(name), optim_payload)
            else:
                self._optim_path(name).unlink(missing_ok=True)
            # metadata last: until it lands, readers see the previous checkpoint as a whole
            _atomic_write(meta_path, json.dumps(meta, indent=2, ensure_ascii=False).encode())
        return meta

    def load_optimizer_state(self, name: str, device: torch.device | str = "cpu") -> dict | None:
        """The optimizer state saved with `name` (for resuming), or None if it has none."""
        meta = self.read_meta(name)
        info = meta.get("optimizer")
        if not info:
            return None
        path = self._optim_path(name)
        payload = _read_verified(path, info.get("sha256"), f"{name}.json", "optimizer state")
        tensors = {k: v.to(device) for k, v in safetensors_load(payload).items()}
        return unflatten_optimizer_state(tensors, info["param_groups"])

    def read_meta(self, name: str) -> dict:
        _, meta_path = self._paths(name)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelNotFound(f"no model named {name!r}") from None
        except OSError as exc:
            raise CorruptCheckpoint(f"{meta_path.name}: unreadable metadata ({exc.strerror})") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptCheckpoint(f"{meta_path.name}: unreadable metadata ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise CorruptCheckpoint(f"{meta_path.name}: unsupported or missing format_version")
        return meta

    def verify(self, name: str) -> None:
        """Raises CorruptCheckpoint unless the weights file is the one the metadata names.
        The hash is computed once per file version (size and modification time)."""
        weights_path, _ = self._paths(name)
        meta = self.read_meta(name)
        try:
            st = weights_path.stat()
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{weights_path.name}: weights file is missing") from None
        key = (name, st.st_size, st.st_mtime_ns, meta.get("weights_sha256"))
        if key in self._verified:
            return
        if st.st_size != meta.get("weights_bytes"):
            raise CorruptCheckpoint(f"{weights_path.name}: weights do not match the hash in {name}.json")
        payload = _read_verified(weights_path, meta.get("weights_sha256"), f"{name}.json", "weights")
        try:
            vocab_size = Vocab.from_json(meta["vocab"]).size
            outputs = _header(payload)["fc.weight"]["shape"][0]
        except Exception as exc:
            raise CorruptCheckpoint(f"{name}: unreadable vocabulary or weights ({type(exc).__name__})") from exc
        if not vocab_size == outputs == meta.get("model_config", {}).get("vocab_size"):
            raise CorruptCheckpoint(
                f"{name}.json: vocabulary of {vocab_size} ids does not match the model's {outputs} outputs"
            )
        self._verified.add(key)

    def load(self, name: str, device: torch.device | str = "cpu") -> Checkpoint:
        """Loads weights onto `device` from the very bytes whose hash was checked against the metadata:
        the file is read once, so another process replacing it meanwhile cannot slip in unchecked."""
        weights_path, meta_path = self._paths(name)
        meta = self.read_meta(name)
        payload = _read_verified(weights_path, meta.get("weights_sha256"), meta_path.name, "weights")
        try:
            config = ModelConfig.from_json(meta["model_config"])
            vocab = Vocab.from_json(meta["vocab"])
            if vocab.size != config.vocab_size:
                raise ValueError(f"vocabulary has {vocab.size} entries but the model has {config.vocab_size} outputs")
            tensors = {k: v.to(device) for k, v in safetensors_load(payload).items()}
            with torch.device(device):
                model = CharRNN(config)
            model.load_state_dict(tensors)
        except CorruptCheckpoint:
            raise
        except Exception as exc:  # any inconsistency between metadata and weights
            raise CorruptCheckpoint(f"{meta_path.name} and {weights_path.name} do not fit together: {exc}") from exc
        model.eval()
        return Checkpoint(name, model, vocab, meta)

    def remove_stale_temporaries(self, older_than: float = 3600.0) -> list[str]:
        """Deletes temporary files a killed writer left behind (only old ones: another process
        sharing the store may be writing right now)."""
        import time

        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for p in self.root.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - p.stat().st_mtime > older_than:
                    p.unlink()
                    removed.append(p.name)
        return removed

    def delete(self, name: str) -> None:
        weights_path, meta_path = self._paths(name)
        if not meta_path.exists():
            raise ModelNotFound(f"no model named {name!r}")
        with self._lock:
            meta_path.unlink(missing_ok=True)  # metadata first: a half-deleted model is simply gone
            weights_path.unlink(missing_ok=True)
            self._optim_path(name).unlink(missing_ok=True)

    def active_name(self) -> str | None:
        try:
            name = (self.root / ACTIVE_FILE).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        return name if NAME_PATTERN.fullmatch(name) and ".." not in name else None

    def set_active(self, name: str) -> None:
        if not self.exists(name):
            raise ModelNotFound(f"no model named {name!r}")
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.root / ACTIVE_FILE, name.encode())


def _header(payload: bytes) -> dict:
    """A safetensors file's header: an 8-byte little-endian length, then that much JSON naming each
    tensor's dtype, shape and offsets (the format's specification)."""
    length = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8 : 8 + length])


def _read_verified(path: Path, sha256: str | None, meta_name: str, what: str) -> bytes:
    """The file's bytes, if they are the ones whose hash the metadata records."""
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path.name}: {what} file is missing") from None
    except OSError as exc:
        raise CorruptCheckpoint(f"{path.name}: {what} unreadable ({exc.strerror})") from None
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise CorruptCheckpoint(f"{path.name}: {what} do not match the hash in {meta_name}")
    return payload


def flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], list]:
    """torch optimizer state_dict -> flat tensors (for safetensors) + JSON-able param groups."""
    tensors = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{index}.{key}"] = t.detach().to("cpu").contiguous()
    return tensors, state["param_groups"]


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name == "empty":
            continue
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}
