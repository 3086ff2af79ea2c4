"""The training config: one dataclass whose fields carry their own help text, from which
``flamediff train --help`` lists the keys (so the list cannot miss one)."""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from flamediff.errors import FlamediffError
from flamediff.training.stages import STAGES

LR_SCHEDULES = ("cosine", "constant")


class TrainConfigError(FlamediffError):
    """A training config that cannot run; the message names the key."""


def setting(help: str, default: Any = MISSING, default_factory: Any = MISSING) -> Any:
    """A config field with its ``--help`` text (no default: the key is required)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run needs; written beside its checkpoints for reproducibility."""

    dataset: str = setting("dataset folder (docs/TRAINING.md's format); its splits.json's held-out identities "
                           "are never drawn")
    output_dir: str = setting("run folder: checkpoints/step-NNNNNNN/, loss.jsonl, train_config.json and, at the "
                              "end, model/")
    preset: str = setting("model size: tiny | demo | sd15", "tiny")
    stage: str = setting("what the run trains: " + " | ".join(f"{stage.name} ({stage.summary})"
                                                               for stage in STAGES.values()), "1")
    init_from: str | None = setting("model folder to start from (e.g. the vae stage's output)", None)
    vae_from: str | None = setting("a new model (preset + overrides) with this model folder's trained VAE", None)
    flame_asset: str | None = setting("FLAME asset folder (default: the procedural head)", None)
    steps: int = setting("optimisation steps of the whole run", 1000)
    batch_size: int = setting("samples (stage 2: clips) per step and process", 4)
    learning_rate: float = setting("learning rate of the trained network", 1e-4)
    field_learning_rate: float = setting("learning rate of the Gaussian attributes, which learn faster (no "
                                         "direct supervision)", 5e-3)
    lr_schedule: str = setting("cosine: linear warm-up then cosine decay to 0 | constant (after warm-up)", "cosine")
    warmup_steps: int = setting("steps of linear learning-rate warm-up from 0", 100)
    ema_decay: float | None = setting("EMA of the trained weights (saved as the model); null: off", 0.999)
    max_grad_norm: float | None = setting("clip the global gradient norm (a batch of 8 is noisy); null: off", 1.0)
    snr_gamma: float | None = setting("min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; null: plain v-MSE",
                                      None)
    weight_decay: float = setting("AdamW weight decay", 0.0)
    seed: int = setting("seed of the initial weights and, with the step and process, of every batch", 0)
    checkpoint_every: int = setting("steps between checkpoints (a run resumes from the newest)", 200)
    keep_checkpoints: int = setting("how many of the newest checkpoints are kept", 2)
    log_every: int = setting("steps between lines of loss.jsonl", 10)
    mixed_precision: str = setting("no | fp16 | bf16", "no")
    reference_dropout: float | None = setting("probability of dropping the reference and label (classifier-free "
                                              "guidance); null: the preset's", None)
    sequence_length: int = setting("frames per clip in stage 2", 14)
    domains: tuple[str, ...] = setting("which samples training draws: real and/or synthetic (ablation: real only)",
                                       ("real", "synthetic"))
    domain_label: bool = setting("false: every sample is labelled real (ablation: no label)", True)
    correspondence: bool = setting("give the pose guider the reference's colour at each surface point a frame shows "
                                   "(models/correspondence.py); an init_from model without it gains its "
                                   "zero-initialised inputs", False)
    overrides: dict[str, Any] = setting("model config fields to change, e.g. {\"control\": \"geometry\"}",
                                        default_factory=dict)
    cache_latents: bool = setting("stages 1 and 2: keep the frozen VAE's latents on disk instead of encoding "
                                  "every step", True)
    fused_optimizer: bool = setting("AdamW's fused kernel, one pass over all the weights (CPU and CUDA; about 5x "
                                    "faster than the per-tensor loop on a 2-core CPU, the same update to float "
                                    "rounding); false: torch's per-tensor loop", True)
    cache_triangle_ids: bool = setting("a model with the correspondence: keep on disk which triangle each pixel of "
                                       "a drawn frame's (and reference's) posed mesh shows, instead of "
                                       "rasterising it every step", True)

    @classmethod
    def from_file(cls, path: str) -> "TrainConfig":
        """Read a ``.json`` or ``.yaml`` config; relative paths are relative to the file."""
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise TrainConfigError(f"cannot read training config {path}: {exc}") from None
        try:
            if path.endswith((".yaml", ".yml")):
                import yaml
                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except ValueError as exc:
            raise TrainConfigError(f"{path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {exc}") from None
        if not isinstance(data, dict):
            raise TrainConfigError(f"{path} must hold a mapping of settings")
        base = os.path.dirname(os.path.abspath(path))
        for key in ("dataset", "output_dir", "init_from", "vae_from", "flame_asset"):
            if isinstance(data.get(key), str):
                data[key] = os.path.join(base, _expand_path(data[key], key, path))
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"{source}: unknown keys {unknown}; known keys are {sorted(known)}")
        missing = [key for key in ("dataset", "output_dir") if key not in data]
        if missing:
            raise TrainConfigError(f"{source}: missing required keys {missing}")
        config = cls(**data)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        if self.stage not in STAGES:
            raise TrainConfigError(f"{source}: 'stage' must be one of {tuple(STAGES)}, not {self.stage!r}")
        if self.init_from and self.vae_from:
            raise TrainConfigError(f"{source}: give 'init_from' (a whole model) or 'vae_from' (its VAE only), not both")
        if STAGES[self.stage].needs_init_from and not self.init_from:
            raise TrainConfigError(f"{source}: {STAGES[self.stage].needs_init_from}: set 'init_from'")
        for key in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints", "sequence_length"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise TrainConfigError(f"{source}: '{key}' must be a positive integer")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise TrainConfigError(f"{source}: 'warmup_steps' must be an integer >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainConfigError(f"{source}: 'lr_schedule' must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise TrainConfigError(f"{source}: 'ema_decay' must be between 0 and 1 (e.g. 0.999), or null for no EMA")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise TrainConfigError(f"{source}: 'max_grad_norm' must be positive, or null for no clipping")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise TrainConfigError(f"{source}: 'snr_gamma' must be positive (5 is usual), or null for plain v-MSE")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainConfigError(f"{source}: 'mixed_precision' must be no, fp16 or bf16")
        self.domains = tuple(self.domains)
        unknown = [d for d in self.domains if d not in ("real", "synthetic")]
        if unknown or not self.domains:
            raise TrainConfigError(f"{source}: 'domains' must list 'real' and/or 'synthetic', not {list(self.domains)}")


def _expand_path(value: str, key: str, source: str) -> str:
    """``~`` and ``$VARIABLES`` expanded (so a config can keep a run's state outside the checkout)."""
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise TrainConfigError(f"{source}: '{key}' uses an environment variable that is not set ({value!r}); "
                               "set it or write the path out")
    return expanded


def _default_text(key: Field) -> str:
    if key.default is MISSING and key.default_factory is MISSING:
        return "required"
    default = key.default if key.default is not MISSING else key.default_factory()  # type: ignore[operator]
    return f"default {json.dumps(default)}"


def config_keys_help(width: int = 100) -> str:
    """Every key of a training config with its default and meaning: ``flamediff train --help``."""
    lines = [textwrap.fill("Keys of the config file (JSON or YAML; relative paths are relative to the file, ~ and "
                           "$VARIABLES are expanded; docs/TRAINING.md has an example):", width)]
    for key in fields(TrainConfig):
        lines.append(textwrap.fill(f"{key.name} ({_default_text(key)}): {key.metadata['help']}", width,
                                   initial_indent="  ", subsequent_indent="      ",
                                   break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)
