"""Request and response models of the HTTP API: bounds, examples and descriptions live here."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal, Unpack

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from app.lm.constraint import MAX_PATTERN_CHARS
from app.lm.data import MIN_CORPUS_CHARS
from app.lm.model import ARCHITECTURE, ModelConfig
from app.lm.sampling import MAX_LOGPROBS, SamplingParams
from app.lm.settings import Setting, settings_of
from app.lm.train import TrainConfig

# A stored model's name as the store checks it (app/lm/store.py: NAME_PATTERN and no ".."), in a
# regular expression without look-ahead, which every JSON Schema tool (and Hypothesis) reads: after
# the first character, each '.' is followed by another character or ends the name. With maxLength 64.
MODEL_NAME_REGEX = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
MODEL_NAME_RULE = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, without '..'."

ModelName = Field(
    pattern=MODEL_NAME_REGEX,
    max_length=64,
    description="1-64 letters, digits, '_', '-' or '.', starting with a letter or digit.",
    examples=["shakespeare"],
)


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a lone surrogate at position {exc.start}, which is not a character") from None
    return value


# Text from a request: any Unicode characters (control characters included), but no lone surrogates,
# which JSON's \ud800 escapes can smuggle in and which no text encoding can store.
Text = Annotated[str, AfterValidator(_valid_unicode)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode)]


def _integral(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer field takes 5.0 as 5: JSON has one kind of number, and JSON Schema's "integer" is any
# number without a fractional part. 5.5, true and "5" are still refused.
Int = Annotated[int, BeforeValidator(_integral)]
OptionalInt = Annotated[int | None, BeforeValidator(_integral)]  # Int | None would garble the bounds' schema

# Requests are strict: unknown fields are refused (a typo such as "temprature" is an error, not
# silently ignored) and types are not coerced (true is not 1, "5" is not 5).
STRICT: ConfigDict = {"extra": "forbid", "strict": True}


class StrictModel(BaseModel):
    model_config = ConfigDict(**STRICT)


def example(value: dict[str, Any], **config: Unpack[ConfigDict]) -> ConfigDict:
    """A response model's config with one real example, shown on the docs page instead of the
    "string" and 0 that would be generated from the types."""
    return ConfigDict(**config, json_schema_extra={"examples": [value]})


# ---- /complete ------------------------------------------------------------------------------

# top_p 0 is allowed: a JSON number such as 1e-400 is above 0 but reads as 0.0, and a mass that
# small keeps only the likeliest character anyway; it is passed on as the least float above 0.
TOP_P = "Nucleus sampling mass; 1 or null = off; near 0 (or 0) = only the likeliest character."
TopP = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False), AfterValidator(lambda p: max(p, math.ulp(0.0)))]
# any k at least the vocabulary's size keeps every character; the decoder holds k in an int64
TopK = Annotated[int, Field(ge=0), BeforeValidator(_integral), AfterValidator(lambda k: min(k, 2**31 - 1))]


def _above_zero(value: float | None) -> float | None:
    """For settings that must be above 0: 1e-400 is above 0 as written but reads as 0.0, so the schema
    allows 0 and 0 means the smallest positive number."""
    return value if value is None else max(value, math.ulp(0.0))


AboveZero = Annotated[float, AfterValidator(_above_zero)]


def sampling_field(name: str, **overrides: Any) -> Any:
    """A request field for one of SamplingParams' settings: its default, description and bounds as
    declared there (app/lm/sampling.py)."""
    [s] = [s for s in settings_of(SamplingParams) if s.name == name]
    extra: dict[str, Any] = {"allow_inf_nan": False} if s.type is float else {}
    if s.bounds.get("gt") == 0:  # see _above_zero: the field's type clamps 0 up
        s.bounds["ge"] = s.bounds.pop("gt")
    description = s.help[:1].upper() + s.help[1:] + "."
    return Field(s.default, description=description, **{**s.bounds, **overrides, **extra})


class SamplerOptions(BaseModel):
    """Sampler options both completion routes take, with the same names and meaning."""

    min_p: float = sampling_field("min_p")
    repetition_penalty: AboveZero = sampling_field("repetition_penalty", le=10.0)
    repeat_last_n: Int = sampling_field("repeat_last_n", le=1_000_000)
    presence_penalty: float = sampling_field("presence_penalty")
    frequency_penalty: float = sampling_field("frequency_penalty")
    regex: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATTERN_CHARS,
        description="Only completions that fully match this pattern (Python `re` syntax without backreferences "
        "or lookarounds): each character must keep the text a possible prefix of a match; where the text "
        "already matches, the characters that cannot continue it are the chance to end there "
        '(finish_reason "stop").',
        examples=["(good|have a nice day)"],
        json_schema_extra={"format": "regex"},
    )


class CompleteRequest(SamplerOptions, StrictModel):
    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"prefix": "good", "max_new_chars": 11}]})

    prefix: Text = Field(min_length=1, description="Text to complete. Unseen characters are read as UNK.")
    max_new_chars: Int = Field(100, ge=0, description="Characters to generate at most.")
    temperature: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False, description="0 = greedy.")
    top_k: TopK | None = Field(None, description="Sample from the k likeliest characters; 0 or null = off.")
    top_p: TopP | None = Field(None, description=TOP_P)
    seed: OptionalInt = Field(
        None, ge=0, le=2**63 - 1, description="Fixes the output of sampling; null = random (reported back)."
    )
    stop: list[NonEmptyText] = Field(
        default_factory=list, max_length=4, description="Generation ends at the first of these (not included)."
    )
    n: Int = Field(1, ge=1, description="Number of completions.")
    stream: bool = Field(
        False,
        description="Answer with Server-Sent Events: `data: {json}` events with new text as it is generated "
        "(and its `logprobs`), a final event with finish_reason and usage, then `data: [DONE]`. With `echo`, "
        "a first event carries the prefix's log-probabilities.",
    )
    model: str | None = Field(
        None,
        pattern=MODEL_NAME_REGEX,
        max_length=64,
        description="Any stored model (GET /models), loaded on demand; null = the active model.",
    )
    logit_bias: dict[Annotated[Text, Field(min_length=1, max_length=1)], Annotated[float, Field(ge=-100, le=100)]] = (
        Field(
            default_factory=dict,
            max_length=1024,
            description="Added to the logits of these characters before sampling (-100 bans one, +100 forces it).",
            examples=[{"y": -5.0}],
        )
    )
    logprobs: OptionalInt = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="null = off; 0 = each generated character's log-probability; 1-20 = also that many likeliest "
        "alternatives. The model's own distribution (temperature 1, before top-k, top-p, min-p, penalties and "
        "bias), in float32 whatever the decoding precision: the same numbers as /score's per_char.",
    )
    echo: bool = Field(
        False,
        description="Also the prefix's per-character log-probabilities, in front of the completion's (the "
        "first character has none: null). With max_new_chars 0 it scores a text. Implies logprobs 0.",
    )


class TopChar(BaseModel):
    char: str
    logprob: float


class CharLogprob(BaseModel):
    char: str = Field(description="The character (as written, for a prefix character the model reads as UNK).")
    logprob: float = Field(description="Its natural-log probability given all the text before it.")
    top: list[TopChar] = Field(description="The likeliest characters at this position, likeliest first.")


class Choice(BaseModel):
    index: int
    text: str = Field(description="The prefix followed by the generated characters.")
    completion: str = Field(description="The generated characters only.")
    finish_reason: Literal["length", "stop"]
    logprobs: list[CharLogprob | None] | None = Field(
        None,
        description="With `logprobs`: one entry per character of `completion` (with `echo`, of `text`; the first "
        "character of the prefix has none).",
    )


class Usage(BaseModel):
    prefix_chars: int
    completion_chars: int


class CompleteResponse(BaseModel):
    model_config = example(
        {
            "model": "default",
            "seed": 1234,
            "choices": [
                {"index": 0, "text": "good i am fine ", "completion": " i am fine ", "finish_reason": "length"}
            ],
            "unknown_chars": [],
            "usage": {"prefix_chars": 4, "completion_chars": 11},
        }
    )

    model: str
    seed: int = Field(description="The seed used: the request's, or the one drawn for it.")
    choices: list[Choice]
    unknown_chars: list[str] = Field(description="Characters of the prefix outside the vocabulary (read as UNK).")
    usage: Usage


# ---- /vocab ---------------------------------------------------------------------------------


class VocabResponse(BaseModel):
    model_config = example({"model": "default", "size": 5, "unk_index": 0, "chars": [None, " ", "a", "d", "e"]})

    model: str
    size: int
    unk_index: int
    chars: list[str | None] = Field(description="Each id's character in id order; null at unk_index.")


# ---- /train ---------------------------------------------------------------------------------


class TrainRequestBase(StrictModel):
    """Unset settings take defaults that suit the text: the tutorial's for `sentences`, and for a
    corpus the recommended ones (app/lm/default.py: an LSTM on an embedding, a time budget, a
    validation split). Every model and training setting (ModelConfig, TrainConfig) is a field."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [
                {
                    "name": "greetings",
                    "sentences": ["hey how are you", "good i am fine", "have a nice day"],
                    "epochs": 100,
                },
                {"name": "poem", "corpus": "the rain in spain stays mainly in the plain\n" * 20, "max_seconds": 30},
                {"name": "plays", "corpus_id": "3f2a9c0d1e4b4f6a8c7d9e0f1a2b3c4d", "max_seconds": 600},
            ],
            # exactly one source of text, not null
            "oneOf": [
                {"required": [source], "properties": {source: {"not": {"type": "null"}}}}
                for source in ("corpus", "sentences", "corpus_id")
            ],
        },
    )

    name: str = ModelName
    corpus: Text | None = Field(
        None,
        description="One training text (or sentences, or corpus_id); a short one is read as fewer streams.",
        # checked in _one_source, with a message that says what is wrong
        json_schema_extra={"minLength": MIN_CORPUS_CHARS, "pattern": r"\S"},
    )
    corpus_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="A text uploaded with POST /corpora.")
    sentences: list[Annotated[Text, Field(min_length=2)]] | None = Field(
        None, min_length=1, description="Separate sentences, padded with spaces to the longest, as in the tutorial."
    )
    resume_from: str | None = Field(
        None,
        pattern=MODEL_NAME_REGEX,
        max_length=64,
        description="Continue training this stored model (its vocabulary, architecture and optimizer state).",
    )
    activate: bool = Field(
        False,
        description="Make it the active model (the default for requests that name none) once trained; "
        "without it, requests reach it by name (`model`).",
    )
    overwrite: bool = Field(False, description="Replace a stored model of the same name.")

    @model_validator(mode="after")
    def _one_source(self) -> TrainRequestBase:
        if sum(x is not None for x in (self.corpus, self.sentences, self.corpus_id)) != 1:
            raise ValueError("give exactly one of corpus, sentences or corpus_id")
        if self.sentences is not None and max(len(s) for s in self.sentences) < 2:  # pragma: no cover
            raise ValueError("sentences need at least 2 characters")
        if self.corpus is not None and not self.corpus.strip():
            raise ValueError("corpus is empty or only whitespace")
        if self.corpus is not None and len(self.corpus) < MIN_CORPUS_CHARS:
            raise ValueError(f"corpus: at least {MIN_CORPUS_CHARS} characters are needed to train on")
        return self


def optional_fields(settings: list[Setting]) -> dict[str, Any]:
    """Pydantic fields for dataclass settings: each optional (null = the default for the text), with
    the setting's description, bounds and choices."""
    out: dict[str, Any] = {}
    for s in settings:
        kind: Any = Literal[s.choices] if s.choices else s.type
        limits: dict[str, Any] = {**s.bounds, "allow_inf_nan": False} if s.type is float else {**s.bounds}
        if s.type is int:  # 5.0 is an integer in JSON Schema
            kind = OptionalInt
        elif s.type is float and limits.get("gt") == 0:
            kind, limits["ge"] = Annotated[float | None, AfterValidator(_above_zero)], limits.pop("gt")
        else:
            kind = kind | None
        out[s.name] = (kind, Field(None, description=s.help[:1].upper() + s.help[1:] + ".", **limits))
    return out


# the model and training settings are ModelConfig's and TrainConfig's fields: declared once, in app/lm
if TYPE_CHECKING:  # a model made at run time: the type checker sees the settings' fields as Any

    class TrainRequest(TrainRequestBase):
        def __getattr__(self, name: str) -> Any: ...

else:
    TrainRequest = create_model(
        "TrainRequest",
        __base__=TrainRequestBase,
        __doc__=TrainRequestBase.__doc__,
        **optional_fields([s for s in settings_of(ModelConfig) if s.name in ARCHITECTURE]),
        **optional_fields(settings_of(TrainConfig)),
    )


class TrainAccepted(BaseModel):
    model_config = example({"job_id": "6f1c0e8e2b9f4a51b3d0c2a7e5f41d90"})

    job_id: str


class Evaluation(BaseModel):
    step: int
    epoch: int
    train_loss: float
    val_loss: float | None
    val_bpc: float | None
    elapsed: float
    sample: str | None = Field(
        None,
        description="A short text the model wrote at this evaluation (120 characters at temperature 0.8, always "
        "from the same seed, after a newline or the text's first character), to watch it learn to write; null "
        "where none was written (at most one a second; the last evaluation always has one).",
    )


class LossPoint(BaseModel):
    step: int
    train_loss: float = Field(description="Mean training loss (nats per character) since the point before.")
    elapsed: float = Field(description="Seconds since training started.")


class TrainJobStatus(BaseModel):
    model_config = example(
        {
            "job_id": "6f1c0e8e2b9f4a51b3d0c2a7e5f41d90",
            "name": "poem",
            "status": "running",
            "epoch": 3,
            "epochs": 50,
            "step": 400,
            "total_steps": 1650,
            "loss": 1.62,
            "val_loss": 1.71,
            "val_bpc": 2.467,
            "best_val_loss": 1.71,
            "lr": 0.0055,
            "chars_per_s": 98000.0,
            "elapsed": 52.4,
            "eta": 67.6,
            "history": [
                {
                    "step": 200,
                    "epoch": 2,
                    "train_loss": 2.1,
                    "val_loss": 1.98,
                    "val_bpc": 2.857,
                    "elapsed": 26.1,
                    "sample": "KING. What say you to the man that we shall be the stand,\nAnd the man and the man",
                },
                {
                    "step": 400,
                    "epoch": 3,
                    "train_loss": 1.62,
                    "val_loss": 1.71,
                    "val_bpc": 2.467,
                    "elapsed": 52.4,
                    "sample": "KING. Why, then I will not be so much a man,\nAnd I am sure of the world and the king.",
                },
            ],
            "loss_history": [
                {"step": 1, "train_loss": 4.17, "elapsed": 0.12},
                {"step": 10, "train_loss": 3.62, "elapsed": 1.3},
                {"step": 20, "train_loss": 3.05, "elapsed": 2.6},
            ],
            "error": None,
            "created_at": "2026-11-29T15:00:00+00:00",
            "finished_at": None,
        }
    )

    job_id: str
    name: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float | None = Field(description="Training loss (nats per character), mean since the last report.")
    val_loss: float | None = Field(description="Latest validation loss (nats per character).")
    val_bpc: float | None = Field(description="Latest validation bits per character.")
    best_val_loss: float | None
    lr: float | None
    chars_per_s: float | None = Field(description="Training characters processed per second.")
    elapsed: float
    eta: float | None = Field(description="Seconds left, estimated from the budget used so far.")
    history: list[Evaluation] = Field(description="Every validation so far, with a sample of the model's text.")
    loss_history: list[LossPoint] = Field(
        description="The training loss against step, for a chart: a point from the first step on, then one "
        "every 10 steps or second (whichever comes first), each the mean since the point before; at most 500: "
        "when full, neighbouring points merge in pairs and the spacing doubles."
    )
    error: str | None
    stopped: Literal["budget", "max_steps", "epochs", "early_stopping", "cancelled"] | None = Field(
        None,
        description="Why it ended: its time budget, its step limit, its epochs, early stopping, or a cancel.",
    )
    settings: dict = Field(
        default_factory=dict,
        description="Every model and training setting it uses: those given, the rest chosen for the text "
        "(`size_class` says which recommended settings a corpus got).",
    )
    created_at: str
    finished_at: str | None


# ---- /corpora, /score -----------------------------------------------------------------------


class CorpusInfo(BaseModel):
    model_config = example(
        {
            "corpus_id": "3f2a9c0d1e4b4f6a8c7d9e0f1a2b3c4d",
            "bytes": 1160000,
            "chars": 1160000,
            "created_at": "2026-11-29T15:00:00+00:00",
        }
    )

    corpus_id: str
    bytes: int
    chars: int
    created_at: str


class CorporaResponse(BaseModel):
    model_config = example(
        {
            "corpora": [
                {
                    "corpus_id": "3f2a9c0d1e4b4f6a8c7d9e0f1a2b3c4d",
                    "bytes": 1160000,
                    "chars": 1160000,
                    "created_at": "2026-11-29T15:00:00+00:00",
                }
            ]
        }
    )

    corpora: list[CorpusInfo]


class ScoreRequest(StrictModel):
    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"text": "good i am fine "}]})

    text: Text = Field(min_length=2, description="Held-out text to score: each character given all before it.")
    model: str | None = Field(
        None, pattern=MODEL_NAME_REGEX, max_length=64, description="Default: the active model. " + MODEL_NAME_RULE
    )
    per_char: bool = Field(
        False,
        description="Also each character's log-probability (a surprisal map of the text); bounded by "
        "CHARRNN_MAX_SCORE_CHARS_PER_CHAR.",
    )
    top: Int = Field(0, ge=0, le=MAX_LOGPROBS, description="With per_char: alternatives per character.")


class ScoreResponse(BaseModel):
    model_config = example(
        {
            "model": "default",
            "nats_per_char": 0.052,
            "bits_per_char": 0.075,
            "perplexity": 1.053,
            "chars_scored": 14,
            "unknown_chars": 0,
        }
    )

    model: str
    nats_per_char: float = Field(description="Mean loss per character, natural log.")
    bits_per_char: float
    perplexity: float
    chars_scored: int
    unknown_chars: int = Field(description="Characters of the text outside the model's vocabulary.")
    chars: list[CharLogprob | None] | None = Field(
        None, description="With per_char: each character's log-probability (null for the first)."
    )


# ---- /models, /health -----------------------------------------------------------------------


class ModelSummary(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "name": "default",
                    "active": True,
                    "ok": True,
                    "cell": "rnn",
                    "hidden_size": 12,
                    "num_layers": 1,
                    "num_parameters": 340,
                    "val_bpc": None,
                    "created_at": "2026-11-29T15:00:00+00:00",
                }
            ]
        },
    )

    name: str
    active: bool
    ok: bool = Field(description="False when the checkpoint cannot be read; error says why.")
    error: str | None = None
    cell: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    num_parameters: int | None = None
    val_bpc: float | None = Field(None, description="Best validation bits per character, where it was measured.")
    created_at: str | None = None


class ModelInfo(BaseModel):
    """A stored model in full: architecture, training settings (never the training text: its
    SHA-256 and counts) and metrics."""

    model_config = ConfigDict(
        populate_by_name=True,
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "name": "default",
                    "active": True,
                    "ok": True,
                    "created_at": "2026-11-29T15:00:00+00:00",
                    "model_config": {
                        "vocab_size": 16,
                        "cell": "rnn",
                        "hidden_size": 12,
                        "num_layers": 1,
                        "dropout": 0.0,
                        "encoding": "one_hot",
                        "embedding_dim": 0,
                    },
                    "training": {"source": "sentences", "sentences_count": 3, "epochs": 100, "learning_rate": 0.01},
                    "metrics": {"final_loss": 0.02, "steps": 100, "seconds": 0.4},
                    "num_parameters": 340,
                    "vocab_size": 16,
                }
            ]
        },
    )

    name: str
    active: bool
    ok: bool
    created_at: str | None = None
    model_config_: dict | None = Field(None, alias="model_config", serialization_alias="model_config")
    training: dict | None = None
    metrics: dict | None = None
    num_parameters: int | None = None
    vocab_size: int | None = None


class ModelsResponse(BaseModel):
    model_config = example(
        {
            "active": "default",
            "models": [
                {
                    "name": "default",
                    "active": True,
                    "ok": True,
                    "cell": "rnn",
                    "hidden_size": 12,
                    "num_layers": 1,
                    "num_parameters": 430,
                    "val_bpc": None,
                    "created_at": "2026-11-29T15:00:00+00:00",
                }
            ],
        }
    )

    active: str | None = Field(description="The model requests get when they name none; null while it loads.")
    models: list[ModelSummary]


DecodeDtype = Literal["float32", "bfloat16"]


class HealthResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ok", "ready": True, "model": "default", "device": "cpu", "decode_dtype": "float32"}
            ]
        }
    )

    status: Literal["ok"]
    ready: bool = Field(description="Whether completions can be served now (GET /ready).")
    model: str | None = Field(description="The active model; null while the first one loads.")
    device: str
    decode_dtype: DecodeDtype | None = Field(
        description="What the active model's decoding matrix products run in (CHARRNN_DECODE_PRECISION)."
    )


class ReadyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ready", "model": "default", "device": "cpu", "decode_dtype": "float32"}]
        }
    )

    status: Literal["ready"]
    model: str
    device: str
    decode_dtype: DecodeDtype


class ErrorBody(BaseModel):
    type: str = Field(description="invalid_request | not_found | conflict | ...")
    message: str
    param: str | None = Field(None, description="The field at fault, where there is one.")


class ErrorResponse(BaseModel):
    model_config = example(
        {
            "error": {
                "type": "invalid_request",
                "message": "temperature: Input should be greater than or equal to 0",
                "param": "temperature",
            }
        }
    )

    error: ErrorBody


# ---- /v1 (OpenAI-compatible) ----------------------------------------------------------------


TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]  # JSON object keys are strings: "12"
Bias = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = Field(False, description="A last chunk with no choices and the request's usage.")


class OpenAICompletionRequest(SamplerOptions):
    """OpenAI's completions request. One token is one character here."""

    model_config = ConfigDict(
        extra="ignore",  # OpenAI clients send fields this server has no use for (user, echo=false, ...)
        strict=True,  # but the fields it knows take their types only (false is not 0, "5" is not 5)
        json_schema_extra={"examples": [{"model": "default", "prompt": "good", "max_tokens": 11, "temperature": 0}]},
    )

    model: str | None = Field(
        None, description="Any model GET /v1/models lists, loaded on demand; null = the active model."
    )
    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)] = Field(
        description="Text to complete, or a list of texts: one choice per prompt and per n (index = prompt x n + k)."
    )
    max_tokens: Int = Field(16, ge=0, description="Characters to generate at most (one token = one character).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: TopP = Field(1.0, description=TOP_P)
    n: Int = Field(1, ge=1)
    stop: NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=4)] | None = Field(
        None, description="Up to 4 stop strings; not included in the output."
    )
    seed: OptionalInt = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    logprobs: OptionalInt = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Each character's log-probability and this many alternatives (up to 20, beyond OpenAI's 5): "
        "the model's own distribution, before sampling steps; the same numbers as /score's per_char.",
    )
    echo: bool = Field(False, description="Return the prompt in front of the completion (with its logprobs).")
    logit_bias: (
        dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]] | None
    ) = Field(None, max_length=1024, description="Vocabulary ids (GET /vocab) to a bias added to their logits.")
    user: str | None = Field(None, max_length=256, description="Accepted as OpenAI's; not used.")
    stream_options: StreamOptions | None = None
    best_of: OptionalInt = Field(None, ge=1, le=1, description="Not implemented: only 1 (or null).")
    suffix: str | None = Field(None, max_length=0, description="Not implemented: only null or empty.")
    top_k: OptionalInt = Field(None, ge=0, description="Extension: sample from the k likeliest characters; 0 = off.")

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the model was saved (Unix time).")
    owned_by: str = "charrnn"


class OpenAIModelList(BaseModel):
    model_config = example(
        {"object": "list", "data": [{"id": "default", "object": "model", "created": 1796050800, "owned_by": "charrnn"}]}
    )

    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAILogprobs(BaseModel):
    """OpenAI's completions logprobs: one token is one character."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class OpenAIChoice(BaseModel):
    index: int
    text: str
    logprobs: OpenAILogprobs | None = None
    finish_reason: Literal["length", "stop"] | None


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAICompletion(BaseModel):
    """OpenAI's completion object; with `stream`, each event is one of these with the new text
    (`finish_reason` null until the last, which also carries `usage`)."""

    model_config = example(
        {
            "id": "cmpl-6f1c0e8e2b9f4a51b3d0c2a7e5f41d90",
            "object": "text_completion",
            "created": 1796050800,
            "model": "default",
            "choices": [{"index": 0, "text": " i am fine ", "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 11, "total_tokens": 15},
        }
    )

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[OpenAIChoice]
    usage: OpenAIUsage | None = None
