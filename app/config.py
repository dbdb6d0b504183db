"""Settings from the environment (prefix CHARRNN_), with types, bounds and defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARRNN_", env_file=".env", extra="ignore")

    model_store: Path = Field(Path("model_store"), description="Directory of checkpoints (a volume in Docker).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps; auto = cuda, else mps, else cpu.")
    default_model_name: str = Field("default", description="Name the embedded default model is saved under.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging level.")

    api_key: SecretStr | None = Field(
        None, description="When set, every route but /health, /metrics and the docs needs Authorization: Bearer."
    )
    admin_api_key: SecretStr | None = Field(
        None, description="When set, training and model management need this key (the plain key is not enough)."
    )
    log_json: bool = Field(False, description="Log one JSON object per line.")
    active_poll_seconds: float = Field(
        2.0, ge=0.0, le=3600, description="How often to look for a model activated by another replica; 0 = never."
    )

    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body, but for /train and /corpora.")
    max_train_body_bytes: int = Field(
        210_000_000, ge=1024, description="Largest /train body (a JSON corpus of max_corpus_chars, escaped)."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call from a browser (JSON list); empty = CORS off."
    )
    ui: bool = Field(
        True, description="Serve the web page (playground, training, models) at /; false = / leads to /docs."
    )

    max_prefix_chars: int = Field(100_000, ge=1, le=1_000_000, description="Longest prefix /complete accepts.")
    prefix_cache_bytes: int = Field(
        64_000_000,
        ge=0,
        description="Memory for the states after long prefixes, so a prefix sent again is not read again "
        "(least recently used leave first; kept apart per API key); 0 = off.",
    )
    compiled_decoding: bool = Field(
        True,
        description="Decode in compiled form: on the CPU, compiled code (numba) runs many characters per call, "
        "sampling included; on a GPU, each step is a recorded CUDA graph (one launch). false = torch one step "
        "at a time, kernel by kernel (the reference path; same choices within float rounding).",
    )
    max_new_chars: int = Field(4_096, ge=1, le=1_000_000, description="Most characters one completion may ask for.")
    max_n: int = Field(16, ge=1, le=256, description="Most completions one request may ask for.")
    max_stop_chars: int = Field(64, ge=1, le=4096, description="Longest stop string.")

    max_batch_size: int = Field(64, ge=1, le=4096, description="Most sequences decoded together in one step.")
    max_queued_requests: int = Field(
        256, ge=0, le=100_000, description="Completions waiting beyond this get 429 with Retry-After."
    )
    batching: bool = Field(True, description="Continuous batching; false decodes one request per forward.")
    decode_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Decoding threads, each with its own batch (one torch thread each on CPU); "
        "0 = one per two CPU cores the process may use (affinity and cgroup limit; at most 4), one on GPU.",
    )
    decode_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Matrix products of decoding: bf16 is several times faster where native (AVX512-BF16/AMX, "
        "recent GPUs); auto = bf16 there for models with hidden_size >= 128, else fp32.",
    )
    torch_threads: int = Field(0, ge=0, le=1024, description="Threads torch may use; 0 = torch's default.")

    max_corpus_chars: int = Field(50_000_000, ge=1, description="Largest training text sent as JSON, in characters.")
    max_corpus_bytes: int = Field(50_000_000, ge=1, description="Largest text uploaded to /corpora, in bytes.")
    max_score_chars: int = Field(5_000_000, ge=2, description="Longest text /score accepts.")
    max_train_seconds: float = Field(86_400.0, gt=0, description="Largest max_seconds a training job may ask for.")
    max_hidden_size: int = Field(2048, ge=1, description="Largest hidden_size /train accepts.")
    max_num_layers: int = Field(8, ge=1, description="Most recurrent layers /train accepts.")
    max_batch_chars: int = Field(
        65_536, ge=1, description="Largest batch_size x seq_len a training step may use (memory bound)."
    )
    max_epochs: int = Field(100_000, ge=1, description="Most epochs /train accepts.")
    max_jobs_kept: int = Field(100, ge=1, description="Finished training jobs remembered for GET /train/{id}.")
    max_loaded_models: int = Field(
        4,
        ge=0,
        le=1000,
        description="Stored models kept loaded for requests that name them, beside the active one "
        "(least recently used leave first).",
    )
    max_score_chars_per_char: int = Field(
        100_000, ge=2, description="Longest text /score scores with per_char (its answer grows with the text)."
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
