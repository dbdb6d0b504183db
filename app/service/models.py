"""The stored models and the one being served: startup load (or the default model's training),
atomic swaps, replicas following the shared store, model details and scoring."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager

import torch

from app.config import Settings
from app.engine import LoadedModel
from app.errors import Conflict, InvalidInput, NotFound
from app.lm import default as default_model
from app.lm import generate
from app.lm.device import decode_dtype
from app.lm.store import Checkpoint, CorruptCheckpoint, InvalidModelName, ModelNotFound, ModelStore
from app.lm.train import TrainingCancelled, train_on_text
from app.metrics import Metrics
from app.service.training import describe_training, text_description

log = logging.getLogger(__name__)


class StartupCancelled(Exception):
    """The service was stopped while it was still loading or training its first model."""


class Models:
    """model_store/ and the active model (the one requests get when they name none)."""

    def __init__(
        self,
        settings: Settings,
        device: torch.device,
        store: ModelStore,
        metrics: Metrics,
        on_swap: Callable[[], None] = lambda: None,
    ):
        self.settings = settings
        self.on_swap = on_swap  # the default model changed (the prefix cache drops its states)
        self.device = device
        self.store = store
        self.metrics = metrics
        self._active: LoadedModel | None = None
        self.how_loaded: str | None = None  # "loaded" | "trained": how the first model got here
        # other stored models that requests named, least recently used first (the active one aside)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def active_or_none(self) -> LoadedModel | None:
        return self._active

    @property
    def active(self) -> LoadedModel:
        assert self._active is not None, "no model loaded yet"
        return self._active

    def _loaded_model(self, checkpoint: Checkpoint) -> LoadedModel:
        dtype = decode_dtype(self.settings.decode_precision, self.device, checkpoint.model.config.hidden_size)
        if self.settings.compiled_decoding:  # the first request should not wait for a compiler
            for warmed in dict.fromkeys((dtype, torch.float32)):  # log-probabilities decode in float32
                generate.warm(checkpoint.model, warmed)
        return LoadedModel(checkpoint.name, checkpoint.model, checkpoint.vocab, checkpoint.meta, dtype)

    def swap_in(self, checkpoint: Checkpoint) -> LoadedModel:
        """Makes `checkpoint` the model served by default, as one reference swap: requests in flight
        finish on the model they started with."""
        self._active = self._loaded_model(checkpoint)
        self.on_swap()
        with self._lock:
            self._loaded.pop(checkpoint.name, None)  # the active model is held apart
        self.metrics.active_model.info(
            {"name": checkpoint.name, "created_at": str(checkpoint.meta.get("created_at", ""))}
        )
        return self._active

    # ---- startup -----------------------------------------------------------------------------

    def load_startup_model(self, should_stop: Callable[[], bool]) -> None:
        """The active model; if it is broken, the newest stored model that loads; if none does, the
        default model, trained again. Every broken checkpoint is logged with its file."""
        started = time.perf_counter()
        for leftover in self.store.remove_stale_temporaries():
            log.warning("removed %s, left in %s by an interrupted write", leftover, self.store.root)
        active = self.store.active_name()
        candidates = [active] if active is not None else []
        others = [n for n in self.store.names() if n != active]
        candidates += sorted(others, key=self._created_at, reverse=True)
        for name in candidates:
            try:
                checkpoint = self.store.load(name, self.device)
            except (ModelNotFound, CorruptCheckpoint) as exc:
                log.error("model %r cannot be loaded: %s", name, exc)
                continue
            self.swap_in(checkpoint)
            if name != active:
                self.store.set_active(name)
            self.how_loaded = "loaded"
            log.info(
                "loaded %s model %r from %s onto %s in %.2fs",
                "active" if name == active else "last good",
                name,
                self.store.root,
                self.device,
                time.perf_counter() - started,
            )
            return
        self.train_default(should_stop)
        self.how_loaded = "trained"
        log.info(
            "no usable checkpoint in %s: trained the default model %r and saved it in %.2fs (device %s)",
            self.store.root,
            self.settings.default_model_name,
            time.perf_counter() - started,
            self.device,
        )

    def _created_at(self, name: str) -> str:
        try:
            return str(self.store.read_meta(name).get("created_at", ""))
        except Exception:
            return ""

    def train_default(self, should_stop: Callable[[], bool]) -> None:
        """The tutorial's model on its three sentences, saved and (unless a user's model was
        activated meanwhile) served. Trained on the CPU whatever the serving device, so every
        install gets the same weights."""
        try:
            trained = train_on_text(
                sentences=default_model.SENTENCES,
                config=default_model.TRAIN_CONFIG,
                should_stop=should_stop,
                **default_model.MODEL_KWARGS,
            )
        except TrainingCancelled:
            raise StartupCancelled() from None
        model, vocab, result = trained.model, trained.vocab, trained.result
        name = self.settings.default_model_name
        meta = self.store.save(
            name,
            model,
            vocab,
            training={
                "source": "sentences",
                **text_description(sentences=default_model.SENTENCES),
                **default_model.TRAIN_CONFIG.to_json(),
            },
            metrics={"final_loss": result.final_loss, "steps": result.steps, "seconds": round(result.seconds, 3)},
        )
        if self._active is None:
            self.store.set_active(name)
            self.swap_in(Checkpoint(name, model.to(self.device), vocab, meta))

    def follow_active(self) -> None:
        """Replicas share model_store: when another process has activated a model, switch to it too."""
        try:
            name = self.store.active_name()
            if name is None or self._active is None:
                return
            sha = self.store.read_meta(name).get("weights_sha256")
            if name == self._active.name and sha == self._active.meta.get("weights_sha256"):
                return
            self.swap_in(self.store.load(name, self.device))
            log.info("switched to model %r, activated in %s by another process", name, self.store.root)
        except Exception as exc:  # a half-written or broken model: keep serving, look again later
            log.warning("could not follow the active model in %s: %s", self.store.root, exc)

    # ---- stored models -----------------------------------------------------------------------

    def activate(self, name: str) -> LoadedModel:
        """Loads a stored model and swaps it in atomically; requests in flight finish on the old one."""
        with store_errors("name"):
            checkpoint = self.store.load(name, self.device)
        self.store.set_active(name)
        loaded = self.swap_in(checkpoint)
        log.info("activated model %r", name)
        return loaded

    def delete(self, name: str, in_use: Callable[[str], str | None]) -> None:
        """Deletes a stored model: never the active one, nor one that `in_use` names a user of."""
        if self._active is not None and name == self._active.name:
            raise Conflict(f"model {name!r} is active; activate another before deleting it", "name")
        user = in_use(name)
        if user is not None:
            raise Conflict(f"{user} is using model {name!r}", "name")
        with store_errors("name"):
            self.store.delete(name)
        self.forget(name)
        log.info("deleted model %r", name)

    def summaries(self) -> list[dict]:
        """A short summary per stored model (GET /models); detail() has the rest."""
        active = self._active.name if self._active is not None else None
        out = []
        for name in self.store.names():
            try:
                meta = self.store.read_meta(name)
                self.store.verify(name)
            except CorruptCheckpoint as exc:
                out.append({"name": name, "active": name == active, "ok": False, "error": str(exc)})
                continue
            config = meta.get("model_config") or {}
            out.append(
                {
                    "name": name,
                    "active": name == active,
                    "ok": True,
                    "cell": config.get("cell"),
                    "hidden_size": config.get("hidden_size"),
                    "num_layers": config.get("num_layers"),
                    "num_parameters": meta.get("num_parameters"),
                    "val_bpc": (meta.get("metrics") or {}).get("best_val_bpc"),
                    "created_at": meta.get("created_at"),
                }
            )
        return out

    def detail(self, name: str) -> dict:
        """Everything a stored model's metadata says about it, but the text it was trained on."""
        with store_errors("name"):
            meta = self.store.read_meta(name)
            self.store.verify(name)
        config = meta.get("model_config") or {}
        return {
            "name": name,
            "active": self._active is not None and name == self._active.name,
            "ok": True,
            "created_at": meta.get("created_at"),
            "model_config": config,
            "training": describe_training(meta.get("training") or {}),
            "metrics": meta.get("metrics"),
            "num_parameters": meta.get("num_parameters"),
            "vocab_size": config.get("vocab_size"),
        }

    def get(self, name: str | None, param: str = "model") -> LoadedModel:
        """The model a request names (the active one when it names none), loaded if need be and kept
        among the `max_loaded_models` most recently used. Blocking (a load reads the disk): call it
        off the event loop. A stored model replaced since it was loaded is loaded again."""
        active = self.active
        if name is None or name == active.name:
            return active
        with store_errors(param):
            sha = self.store.read_meta(name).get("weights_sha256")
            with self._lock:
                loaded = self._loaded.get(name)
                if loaded is not None and loaded.meta.get("weights_sha256") == sha:
                    self._loaded.move_to_end(name)
                    self.metrics.model_loads.labels("hit").inc()
                    return loaded
            loaded = self._loaded_model(self.store.load(name, self.device))
        self.metrics.model_loads.labels("load").inc()
        with self._lock:
            self._loaded[name] = loaded
            self._loaded.move_to_end(name)
            while len(self._loaded) > self.settings.max_loaded_models:
                evicted, _ = self._loaded.popitem(last=False)
                log.info("unloaded model %r (least recently used of %d)", evicted, self.settings.max_loaded_models)
        return loaded

    def forget(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)


@contextmanager
def store_errors(param: str):
    """The store's errors as domain errors: a bad name is invalid input, a missing model not found,
    a broken one a conflict."""
    try:
        yield
    except InvalidModelName as exc:
        raise InvalidInput(str(exc), param) from None
    except ModelNotFound as exc:
        raise NotFound(str(exc), param) from None
    except CorruptCheckpoint as exc:
        raise Conflict(f"the model cannot be loaded: {exc}", param) from None
