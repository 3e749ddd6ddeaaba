"""The workspace's `config.json` (SPEC section 6), validated with pydantic.

Every section is its own model, so a component receives only its part
(`config.training`, `config.lora`). Unknown keys are errors: a typo must not
silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from finetuned.errors import FinetunedError
from finetuned.fsio import atomic_write_json

log = logging.getLogger(__name__)

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class EarlyStopping(_Section):
    """End a job (completed, reason `early_stopped`) when its metric stops improving."""

    metric: str = Field("val_loss", pattern=r"^(val_loss|eval:[A-Za-z0-9][A-Za-z0-9_.-]*)$")
    patience: int = Field(3, gt=0)  # measurements without an improvement before it stops
    min_delta: float = Field(0.0, ge=0)  # what counts as an improvement

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "val_loss"

    @property
    def key(self) -> str:
        """The metric's name in logs/metrics: val_loss, or eval/SUITE."""
        return self.metric.replace("eval:", "eval/", 1)


class TrainingSettings(_Section):
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_seq_len: int = Field(1024, ge=16)
    seed: int = 42
    checkpoint_every_steps: int = Field(100, gt=0)
    log_every_steps: int = Field(10, gt=0)
    mode: Literal["continuous", "independent"] = "continuous"
    warmup_steps: int = Field(10, ge=0)
    # After warmup: constant, or down to min_lr_ratio x learning_rate over the job's steps (worker/lr_schedule.py).
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    # A PEFT adapter folder the LoRA weights start from (relative paths: from the workspace).
    init_adapter: str | None = None
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    # Recompute activations in the backward pass: less memory for longer sequences, ~30% more time.
    activation_checkpointing: bool = False
    # auto: bf16 autocast (fp32 weights and optimizer) where the device computes bf16 natively (models/precision.py).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    early_stopping: EarlyStopping | None = None


class PreferenceSettings(_Section):
    """How preference data trains (worker/objectives/): pairs take `objective`, labelled answers KTO."""

    objective: Literal["dpo", "orpo", "simpo"] = "dpo"
    beta: float = Field(0.1, gt=0)  # DPO, SimPO and KTO: how far the policy may move from the reference
    orpo_lambda: float = Field(0.1, ge=0)  # ORPO: weight of the odds-ratio term beside the NLL of the chosen
    simpo_gamma: float = Field(0.5, ge=0)  # SimPO: the target reward margin
    sft_weight: float = Field(0.0, ge=0)  # an added NLL on the chosen answer (LLaMA-Factory's pref_ftx)
    kto_desirable_weight: float = Field(1.0, gt=0)
    kto_undesirable_weight: float = Field(1.0, gt=0)


class ControlSettings(_Section):
    pause_release_after_seconds: float = Field(600, ge=0)
    # A step (or a model load) silent for this long is treated as hung: the worker is killed.
    step_timeout_seconds: float = Field(1800, gt=0)
    # How often a job whose worker crashed is tried again before it fails.
    max_retries: int = Field(2, ge=0)


class InboxSettings(_Section):
    settle_seconds: float = Field(2, ge=0)
    poll_seconds: float = Field(1.0, gt=0)
    # The same bytes dropped again are refused as a duplicate unless this is set.
    allow_duplicates: bool = False


class DataSettings(_Section):
    train_on_prompt: bool = False
    system_prompt: str | None = None
    holdout_fraction: float = Field(0.05, ge=0, lt=1)
    max_holdout: int = Field(200, ge=0)
    packing: bool = True
    overlong: Literal["drop", "truncate"] = "drop"
    skip_bad_lines: bool = False
    # Above this share of a file's examples dropped (too long, nothing left to train), it is refused.
    max_dropped_fraction: float = Field(0.5, ge=0, le=1)
    max_line_bytes: int = Field(64 * 2**20, gt=0)
    # Tokenise queued files in a second process while the current job trains.
    prepare_ahead: bool = True


class PreviewSettings(_Section):
    """What the model answers on a few held-out prompts while it trains (worker/previews.py)."""

    every_steps: int = Field(50, ge=0)  # 0: no previews
    examples: int = Field(3, ge=1)
    max_new_tokens: int = Field(64, gt=0)
    seconds: float = Field(20, gt=0)  # hard limit for one preview round
    budget: float = Field(0.05, ge=0, le=1)  # share of training time previews may take


class EvaluationSettings(_Section):
    """Suites in `evals/` run on the loaded model while it trains (evaluation/runner.py), and gate a switch."""

    every_steps: int | None = Field(None, ge=0)  # None: at every checkpoint; 0: never while training
    # Share of training time evaluation may take: 0.1 a tenth, 1 as long as training; more is allowed (tests, or
    # a user who wants every round whatever it costs).
    budget: float = Field(0.1, ge=0)
    max_regression: float = Field(0.05, ge=0, le=1)  # a suite's score may fall this much before a switch is refused
    publish: Literal["last", "best"] = "last"  # which weights become the adapter: the last step's, or the best
    suite_seconds: float = Field(120, gt=0)  # a suite's time limit; cases not reached are not counted
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(8, gt=0)


MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """A name or address that only this machine reaches."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class MonitorSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str | None = None
    max_upload_mb: float = Field(512, gt=0)
    # Heartbeats come every second; this many seconds without one means the daemon is stuck or gone.
    stale_after_seconds: float = Field(10, gt=0)
    # Open connections the monitor keeps (pages, scripts); it shares the daemon's file descriptors, so it
    # never takes more than a quarter of the process's limit, whatever this says.
    max_connections: int = Field(256, ge=4)
    # A client that has not sent a whole request head by then is disconnected (half-open sockets).
    header_timeout_seconds: float = Field(10, gt=0)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: str | None) -> str | None:
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters, so it cannot be guessed "
                             "(python3 -c 'import secrets; print(secrets.token_urlsafe(24))' makes one)")
        return token

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class ConsolidateSchedule(_Section):
    every_jobs: int | None = Field(None, gt=0)  # consolidate after every N completed jobs
    daily_at: str | None = Field(None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")  # "HH:MM", when idle


class LifecycleSettings(_Section):
    keep_checkpoints: int = Field(3, ge=1)
    # Below this much free space (plus the expected size) a checkpoint waits and the line pauses.
    min_free_gb: float = Field(2.0, ge=0)
    consolidate: ConsolidateSchedule = Field(default_factory=ConsolidateSchedule)


class NotifySettings(_Section):
    webhook: str | None = None  # receives a JSON POST per event
    command: str | None = None  # runs with the same JSON on stdin
    timeout_seconds: float = Field(10, gt=0)


class RaySettings(_Section):
    """Ray Train on an existing cluster (docs/scaling.md)."""

    address: str = "auto"  # "auto": the cluster this machine joined with `ray start`
    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False  # as in Ray's ScalingConfig: a GPU cluster says so
    resources_per_worker: dict[str, float] = Field(default_factory=dict)  # e.g. {"CPU": 4, "GPU": 1}


class DistributedSettings(_Section):
    """Training past one device (docs/scaling.md): the daemon still owns the queue, files and controls."""

    launcher: Literal["none", "torchrun", "ray"] = "none"
    nproc_per_node: int = Field(1, gt=0)  # torchrun: ranks on this machine (one per GPU)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    ray: RaySettings = Field(default_factory=RaySettings)


class Config(_Section):
    base_model: str = "builtin:smollm2-135m-instruct"
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    inbox: InboxSettings = Field(default_factory=InboxSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    previews: PreviewSettings = Field(default_factory=PreviewSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> Config:
        if self.training.init_adapter and self.method == "full":
            raise ValueError("training.init_adapter needs method lora or qlora (a full fine-tune has no adapter)")
        return self


# Keys that moved to the section that says what they configure: (old section, old key) -> (section, key).
MOVED = {("monitor", f"preview_{key}"): ("previews", key)
         for key in ("every_steps", "examples", "max_new_tokens", "seconds", "budget")}


def _moved_keys(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of `raw` with keys read from their old place moved to their new one, and a warning for each."""
    raw = json.loads(json.dumps(raw))  # moving keys must not change the caller's copy
    notes = []
    for (old_section, old_key), (section, key) in MOVED.items():
        old = raw.get(old_section)
        if not isinstance(old, dict) or old_key not in old:
            continue
        value = old.pop(old_key)
        new = raw.setdefault(section, {})
        if isinstance(new, dict) and key not in new:
            new[key] = value
        notes.append(f"{old_section}.{old_key} is now {section}.{key}; it was read from its old place "
                     f"(move it in config.json)")
    return raw, notes


class ConfigError(FinetunedError):
    """A config.json that cannot be used; the message is one line naming the key (`key`, where one is to
    blame; `unknown` where that key is no setting at all)."""

    def __init__(self, message: str, key: str | None = None, unknown: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key, self.unknown = key, unknown


def _problem(error: ErrorDetails, path: Path | str, more: int = 0) -> ConfigError:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return ConfigError(f"{path}: unknown key '{key}'", key, unknown=True)
    if error["type"] == "value_error":  # a validator's own words; a model validator's name their keys
        where = f"{key}: " if error["loc"] else ""
        return ConfigError(f"{path}: {where}{error['msg'].removeprefix('Value error, ')}",
                           key if error["loc"] else None)
    got = error.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {json.dumps(got)})"
    tail = f"; and {more} more problem(s)" if more else ""
    return ConfigError(f"{path}: {key}: {error['msg']}{got_text}{tail}", key)


def load_config(path: Path) -> Config:
    """Read config.json; a missing file gets the defaults written out. A ConfigError says how to mend it."""
    if not path.exists():
        config = Config()
        save_config(path, config)
        return config
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}", hint="edit config.json") from None
    try:
        return parse_config(raw, path)
    except ConfigError as exc:
        exc.hint = repair_hint(exc)
        raise


def parse_config(raw: Any, path: Path | str, warn: bool = True) -> Config:
    """A config from config.json's content: keys in their old place are read (with a warning), then validated."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a JSON object")
    raw, notes = _moved_keys(raw)
    for note in notes:
        if warn:
            log.warning("%s: %s", path, note)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        raise _problem(errors[0], path, len(errors) - 1) from None


def problems(raw: Any, path: Path | str) -> list[ConfigError]:
    """Every reason config.json's content `raw` is refused, each naming its key; none when it validates."""
    if not isinstance(raw, dict):
        return [ConfigError(f"{path}: must hold a JSON object")]
    try:
        Config.model_validate(_moved_keys(raw)[0])
    except ValidationError as exc:
        return [_problem(error, path) for error in exc.errors()]
    return []


def repair_hint(exc: ConfigError) -> str:
    """How to mend config.json when `exc` is its problem: the command that can, or the file itself."""
    if exc.key is None:
        return "edit config.json"
    if exc.unknown:
        return f"remove it with: finetuned config unset {exc.key}, or edit config.json"
    return f"fix it with: finetuned config set {exc.key} VALUE, or edit config.json"


def save_config(path: Path, config: Config) -> None:
    # Only the user may read it: it holds the monitor's token and the notification endpoints.
    atomic_write_json(path, config.model_dump(mode="json"), mode=0o600)


# The settings that open doors (the monitor's token, where notifications go): they live in config.json
# alone, and every copy of the config written elsewhere (job records, job.json, exports, the API) says this.
REDACTED = "***"
SECRETS = {"monitor": ("token",), "notify": ("webhook", "command")}


def redacted(value: Any) -> Any:
    """A copy of `value` (a config dump, or any JSON holding one) with every secret setting replaced by ***."""
    if isinstance(value, list):
        return [redacted(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {key: redacted(v) for key, v in value.items()}
    for section, keys in SECRETS.items():
        part = out.get(section)
        if isinstance(part, dict):
            out[section] = {k: REDACTED if k in keys and v is not None else v for k, v in part.items()}
    return out


def protect(path: Path, config: Config) -> None:
    """A config.json that holds a secret and that others may read is made the owner's alone."""
    has_secret = config.monitor.token or config.notify.webhook or config.notify.command
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if has_secret and mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s holds secrets (monitor.token, notify.*) and was readable by others (%o): now 600",
                        path, mode)
    except OSError as exc:
        log.warning("%s: could not check who may read it: %s", path, exc)


def without_secrets(config: Config) -> Config:
    """The config a worker gets: the same training, none of the secrets (validation skipped: *** is no token)."""
    monitor = config.monitor.model_copy(update={"token": REDACTED if config.monitor.token else None})
    notify = config.notify.model_copy(update={k: REDACTED for k in SECRETS["notify"] if getattr(config.notify, k)})
    return config.model_copy(update={"monitor": monitor, "notify": notify})
