"""The trial configuration: one validated tree, addressed by dotted keys (`model.ffn_scale`).

Every knob a sweep may vary lives here, with a one-line description that `--print-config` turns into a YAML
comment. Unknown keys and bad values raise `ConfigError` naming the key. One file on purpose, past 400 lines:
it is the trial's whole schema, read top to bottom by section (data, speech, model, train, detector), and
the space-file checks validate every cell against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PosEnc = Literal["rel_shaw", "rel_xl", "abs", "abs+rel_shaw", "rope", "none"]
POS_ENCODINGS: tuple[str, ...] = PosEnc.__args__
ForcedTarget = Literal["centre", "first", "frame", "window"]
FORCED_TARGETS: tuple[str, ...] = ForcedTarget.__args__

# Keys that were renamed: each old name is refused with the new one, never silently ignored or translated.
RENAMED_KEYS: dict[str, str] = {
    "model.center_attention_steps": "model.forced_attention_steps",
    "model.center_attention_blend_steps": "model.forced_attention_blend_steps",
}


class ConfigError(ValueError):
    """A config key is unknown or its value is invalid. `key` is the dotted name."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: Literal["synthetic", "audio"] = Field(
        "synthetic",
        description="synthetic: the rendered prototype corpus below; audio: real speech (the speech section)",
    )
    seed: int = Field(0, description="seed of the corpus itself (prototypes, bigram model, held-out set)")
    num_labels: int = Field(24, ge=2, description="vocabulary size, EOS excluded")
    feature_dim: int = Field(40, ge=4, description="log-mel-like feature dimensions per frame")
    min_labels: int = Field(6, ge=1, description="fewest labels per utterance")
    max_labels: int = Field(12, ge=1, description="most labels per utterance")
    min_label_frames: int = Field(6, ge=1, description="shortest label, in input frames (10 ms each)")
    max_label_frames: int = Field(12, ge=1, description="longest label, in input frames")
    min_silence_frames: int = Field(8, ge=0, description="shortest leading/trailing silence, input frames")
    max_silence_frames: int = Field(30, ge=0, description="longest leading/trailing silence, input frames")
    noise: float = Field(0.5, ge=0, description="std of white noise added to every frame")
    prototype_separation: float = Field(
        1.5, gt=0, description="distance of each label's prototype from its confusion-group centre"
    )
    confusion_groups: int = Field(
        0, ge=0, description="labels share this many group centres (0: every label is its own centre)"
    )
    transition_frames: int = Field(2, ge=0, description="frames of linear blend between neighbouring labels")
    channel_offset: float = Field(
        0.0,
        ge=0,
        description="std of a per-utterance constant vector added to every frame (speaker/channel variation: "
        "undoing it takes utterance-wide context)",
    )
    fixed_frames: int = Field(
        0,
        ge=0,
        description="0: natural lengths; N: every utterance is N frames (the trailing silence fills it up)",
    )
    bigram_concentration: float = Field(
        0.3, gt=0, description="Dirichlet concentration of the bigram model (small: predictable sequences)"
    )
    features: Literal["linear", "log_mel"] = Field(
        "linear",
        description="linear: prototypes under white noise, silence = padding = 0; log_mel: band energies "
        "under Gamma noise, log10 with a floor (silence low but noisy, padding at the floor: the paper's)",
    )
    speech_level: float = Field(-2.0, description="log_mel: mean log10 energy of speech frames")
    silence_level: float = Field(-7.0, description="log_mel: log10 energy of silence")
    log_floor: float = Field(-10.0, description="log_mel: log10 floor, also the padding value (paper: -10)")
    bucket_batches: int = Field(
        0,
        ge=0,
        description="0: every batch drawn independently; N: N batches at a time cut from a pool of N x "
        "batch_size utterances sorted by length (RETURNN's bucketed ordering: little padding)",
    )

    @model_validator(mode="after")
    def _ranges(self) -> DataConfig:
        for low, high in [
            ("min_labels", "max_labels"),
            ("min_label_frames", "max_label_frames"),
            ("min_silence_frames", "max_silence_frames"),
        ]:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) exceeds {high} ({getattr(self, high)})")
        if self.features == "log_mel" and not self.log_floor < self.silence_level:
            raise ValueError(
                f"log_floor ({self.log_floor}) must lie below silence_level {self.silence_level}"
            )
        longest = self.max_silence_frames + self.max_labels * self.max_label_frames + self.min_silence_frames
        if 0 < self.fixed_frames < longest:
            raise ValueError(
                f"fixed_frames ({self.fixed_frames}) is shorter than the longest utterance ({longest}: "
                "max_silence_frames + max_labels * max_label_frames + min_silence_frames)"
            )
        return self


class ModelConfig(_Section):
    subsampling: Literal[4, 6] = Field(4, description="frontend time subsampling: 4, or 6 as in the paper")
    frontend_channels: int = Field(32, ge=1, description="channels of the three frontend convolutions")
    pad_mode: Literal["zero", "unmasked"] = Field(
        "zero", description="zero: padded frames zeroed before every convolution; unmasked: as in RETURNN"
    )
    d_model: int = Field(64, ge=8, description="encoder width")
    layers: int = Field(6, ge=1, description="Conformer blocks")
    heads: int = Field(4, ge=1, description="self-attention heads")
    ffn_dim: int = Field(256, ge=1, description="FFN hidden width")
    ffn_activation: Literal["swish", "relu2"] = Field("swish", description="swish, or ReLU squared (paper)")
    ffn_scale: float = Field(0.5, ge=0, description="Macaron FFN residual scale s (paper: 0.5)")
    mhsa_scale: float = Field(
        1.0, ge=0, description="self-attention residual scale (paper: 1.0; >1 lets MHSA outgrow the residual)"
    )
    mhsa_scale_from: int = Field(
        1, ge=1, description="first block (1-based) whose MHSA gets mhsa_scale; earlier blocks keep 1.0"
    )
    mhsa_scale_schedule: list[tuple[int, float]] = Field(
        default_factory=list,
        description="[[step, scale], ...]: mhsa_scale over training, linear between points, held beyond them "
        "(the paper's order: dominance grows after the early phase); empty: the constant mhsa_scale",
    )
    conv_kernel: int = Field(15, ge=1, description="depthwise convolution kernel (paper: 32)")
    conv_norm: Literal["batch", "layer"] = Field("layer", description="norm in the conv module")
    pos_enc: PosEnc = Field("rel_shaw", description="positional encoding: " + ", ".join(POS_ENCODINGS))
    rel_clip: int = Field(16, ge=1, description="clipping distance of the learned relative positions")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout in the encoder and frontend")
    att_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on self-attention weights")
    dropout_broadcast: bool = Field(
        False,
        description="one dropout mask per utterance and feature, shared over time (RETURNN's "
        "rf_dropout_broadcast, the paper's setting); false: a mask per frame",
    )
    decoder: Literal["lstm", "transformer"] = Field(
        "lstm", description="lstm: additive attention with weight feedback (paper); or transformer"
    )
    decoder_dim: int = Field(128, ge=8, description="LSTM units, or transformer decoder width")
    embed_dim: int = Field(64, ge=4, description="target embedding size")
    attention_dim: int = Field(64, ge=4, description="additive-attention key dimension")
    weight_feedback: bool = Field(True, description="accumulated-attention feedback in the LSTM decoder")
    decoder_layers: int = Field(2, ge=1, description="transformer decoder layers")
    decoder_heads: int = Field(4, ge=1, description="transformer decoder heads")
    ctc_layers: list[int] = Field(
        default_factory=list,
        description="blocks (1-based) with a CTC auxiliary loss (paper mitigation: [4, 8])",
    )
    self_attention_off_steps: int = Field(
        0, ge=0, description="self-attention reduced to its value projection before this step (mitigation)"
    )
    forced_attention_steps: int = Field(
        0,
        ge=0,
        description="cross-attention forced onto forced_attention_at before this step (centre: the paper's "
        "mitigation; elsewhere: step 1 induced); meanwhile the detector reads the decoder's own, learned "
        "attention, not the forced one",
    )
    forced_attention_blend_steps: int = Field(
        0, ge=0, description="steps over which the forced cross-attention blends into the learned one"
    )
    forced_attention_at: ForcedTarget = Field(
        "centre",
        description="the forced target: centre (the middle frame, index T'//2 from 0), first (the first "
        "frame), frame (the k-th frame), or window (uniform over the first k frames); k in encoder frames",
    )
    forced_attention_frames: int = Field(
        1, ge=1, description="k of forced_attention_at frame / window (from 1; clipped to the utterance)"
    )
    init: Literal["torch", "returnn"] = Field(
        "torch",
        description="torch: PyTorch's default initialisation; returnn: Glorot uniform weights (embeddings, "
        "learned positions too) and zero biases, as the paper's RETURNN models",
    )
    attention_bias: bool = Field(True, description="biases in self-attention q/k/v/out (paper: none)")
    abs_pos_xscale: bool = Field(
        False, description="abs positions are added to x * sqrt(d_model), not x (the Transformer convention)"
    )
    control: Literal["none", "reverse_encoder"] = Field(
        "none", description="reverse_encoder: time reversed by construction (detector control, never natural)"
    )
    control_block: int = Field(
        1, ge=1, description="with control=reverse_encoder: block whose input is reversed"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.decoder == "transformer" and self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim ({self.decoder_dim}) must be divisible by decoder_heads")
        if self.pos_enc == "rope" and (self.d_model // self.heads) % 2:
            raise ValueError("rope needs an even head dimension")
        bad = [b for b in self.ctc_layers if not 1 <= b <= self.layers]
        if bad:
            raise ValueError(f"ctc_layers {bad} outside 1..{self.layers}")
        steps = [step for step, _ in self.mhsa_scale_schedule]
        if steps != sorted(set(steps)) or any(scale < 0 for _, scale in self.mhsa_scale_schedule):
            raise ValueError("mhsa_scale_schedule needs increasing steps and scales >= 0")
        if self.mhsa_scale_schedule and self.mhsa_scale != 1.0:
            raise ValueError("set mhsa_scale or mhsa_scale_schedule, not both")
        if self.mhsa_scale_from > self.layers:
            raise ValueError(f"mhsa_scale_from ({self.mhsa_scale_from}) exceeds layers ({self.layers})")
        if self.control_block > self.layers:
            raise ValueError(f"control_block ({self.control_block}) exceeds layers ({self.layers})")
        return self


class TrainConfig(_Section):
    steps: int = Field(800, ge=1, description="training steps (the trial's length)")
    batch_size: int = Field(16, ge=1, description="utterances per step")
    lr_schedule: Literal["one_cycle", "warmup_constant"] = Field(
        "one_cycle", description="one_cycle: start->peak over warmup, ->start at 90%, ->final (paper)"
    )
    lr_peak: float = Field(2e-3, gt=0, description="peak learning rate")
    lr_start: float = Field(2e-5, ge=0, description="one_cycle: first and 90%-point learning rate")
    lr_final: float = Field(2e-6, ge=0, description="one_cycle: last learning rate")
    lr_warmup: float = Field(0.2, ge=0, le=0.9, description="fraction of training spent warming up")
    decoder_lr_scale: float = Field(
        1.0, gt=0, description="decoder learning rate = this x the schedule's (slow decoder: encoder adapts)"
    )
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    grad_clip: float = Field(5.0, gt=0, description="global gradient-norm clip")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing of the CE loss")
    ctc_scale: float = Field(1.0, ge=0, description="weight of each CTC auxiliary loss")
    specaug_time_masks: int = Field(2, ge=0, description="SpecAugment time masks per utterance")
    specaug_time_width: int = Field(8, ge=1, description="widest time mask, input frames")
    specaug_feature_masks: int = Field(1, ge=0, description="SpecAugment feature masks per utterance")
    specaug_feature_width: int = Field(4, ge=1, description="widest feature mask, dims")
    specaug_start: int = Field(100, ge=0, description="SpecAugment is off before this step")
    specaug: Literal["fixed", "paper"] = Field(
        "fixed",
        description="fixed: the counts above from specaug_start on; paper: RETURNN's ramp over specaug_steps "
        "(counts grow with length and step, widths 1..specaug_*_width; see trainers/specaugment.py)",
    )
    specaug_steps: tuple[int, int, int] = Field(
        (5000, 15000, 25000), description="paper ramp: the three stage steps (paper: 5k, 15k, 25k updates)"
    )
    specaug_mask_value: float = Field(
        0.0, description="value of masked features (RETURNN: 0; on log_mel features 0 is loud, not silence)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    bf16: bool = Field(False, description="bf16 autocast on CUDA")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: leave as set by the environment)")
    checkpoint_every: int = Field(1, ge=1, description="save resumable state every this many evaluations")

    @model_validator(mode="after")
    def _ramp(self) -> TrainConfig:
        if list(self.specaug_steps) != sorted(self.specaug_steps) or self.specaug_steps[0] < 0:
            raise ValueError(f"specaug_steps must be >= 0 and non-decreasing, got {self.specaug_steps}")
        return self


class DetectorConfig(_Section):
    every: int = Field(50, ge=1, description="evaluate the detector every this many steps (and at the end)")
    utterances: int = Field(16, ge=1, description="held-out utterances for attention and accuracy")
    gradient_utterances: int = Field(4, ge=1, description="of those, how many get per-block gradient maps")
    batches: int = Field(
        1,
        ge=1,
        description="held-out utterances are read in this many length-sorted batches (1: one batch in corpus "
        "order); use >1 with data.bucket_batches so held-out padding looks like training padding",
    )
    min_accuracy: float = Field(0.5, ge=0, le=1, description="below this teacher-forced accuracy: undecided")
    min_peak: float = Field(0.2, ge=0, le=1, description="mean max attention weight that counts as focused")
    min_focus: float = Field(
        8.0,
        ge=1,
        description="... or mean max weight at least this many times uniform (peak x T'); neither: undecided "
        "(up to T' = min_focus / min_peak only min_peak can hold)",
    )
    max_word_overlap: float = Field(
        0.6,
        ge=0,
        le=1,
        description="... or, where labels share words (speech), consecutive words' pooled attention "
        "overlapping at most this much (1 - total variation; trainers.detector.readings.word_overlap)",
    )
    min_agreement: float = Field(
        0.75,
        ge=0.5,
        le=1,
        description="reversed needs this fraction of utterances reading backwards; normal at most 1 - this",
    )
    initial_frames: int = Field(
        3, ge=1, description="encoder frames that count as an utterance's initial frames (sink, mechanism)"
    )
    sink_lift: float = Field(
        3.0,
        gt=1,
        description="initial frames drawing this many times their uniform share of cross-attention are a "
        "start-edge sink: direction and focus are read outside it, and a run focused only there is undecided",
    )
    gradient_chunk: int = Field(
        64, ge=1, description="(utterance, label) copies per backward pass of the gradient maps (memory)"
    )
    min_direction: float = Field(0.5, gt=0, le=1, description="|direction| needed for normal or reversed")
    confirm: int = Field(2, ge=1, description="consecutive evaluations a final label must hold")
    early_stop: bool = Field(False, description="stop once the label held for `patience` evaluations")
    patience: int = Field(3, ge=1, description="early stop: evaluations the decided label must hold")
    min_steps: int = Field(300, ge=0, description="early stop: never before this step")
    blank_score: float = Field(-4.0, description="gradient alignment: constant blank log-score")
    shift_margin: float = Field(
        0.3, ge=0, le=1, description="shifted if attention misses true spans this much more than alignment"
    )


class SpeechConfig(_Section):
    """Real audio (data.source: audio): where the corpus is and how it becomes features and labels.

    Read by trainers/speech/corpus.py; the corpus scan (missing paths and files, empty transcripts, unreadable
    audio, other sample rates) runs before a trial or sweep writes anything."""

    root: str = Field(
        "", description="LibriSpeech-layout corpus: ROOT/<subset>/<speaker>/<chapter>/*.flac + *.trans.txt"
    )
    subsets: list[str] = Field(
        default_factory=lambda: ["train-clean-100"], description="training subsets (folders under root)"
    )
    heldout_subset: str = Field(
        "",
        description="subset of the detector's held-out utterances; '': a fixed draw of training utterances "
        "(the paper analyses training utterances)",
    )
    manifest: str = Field(
        "",
        description="instead of root: a lhotse CutSet manifest (.jsonl or .jsonl.gz) of training utterances",
    )
    heldout_manifest: str = Field("", description="with manifest: a lhotse CutSet of held-out utterances")
    alignments: str = Field(
        "",
        description="word alignments: '' = what the corpus carries (*.alignment.txt beside the transcripts, "
        "lhotse alignment items); or a CTM file, or a folder of TextGrid or *.alignment.txt files",
    )
    max_duration: float = Field(19.5, gt=0, description="drop longer utterances, seconds (paper: 19.5)")
    vocabulary: Literal["bpe", "char"] = Field(
        "bpe", description="bpe: sentencepiece BPE on the training transcripts; char: characters"
    )
    vocab_size: int = Field(
        1000, ge=2, description="bpe: most pieces (paper: 1k); a small corpus stops where it runs out"
    )
    cache_dir: str = Field(
        "", description="feature cache folder ('': $XDG_CACHE_HOME/flipsweep, else ~/.cache/flipsweep)"
    )
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="stored feature precision (float16 halves the cache of a large corpus)"
    )

    @field_validator("root", "manifest", "heldout_manifest", "alignments")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Absolute from here on: a sweep's trials run in other working folders than the driver's. Whether
        # the path exists is checked by the corpus scan before a trial or sweep writes anything (exit 2),
        # not here, so that a space file can be validated (and dry-run) away from its corpus.
        return str(Path(value).expanduser().resolve()) if value else value

    @model_validator(mode="after")
    def _one_corpus(self) -> SpeechConfig:
        if self.root and self.manifest:
            raise ValueError("set speech.root or speech.manifest, not both")
        if self.root and not self.subsets:
            raise ValueError("speech.subsets is empty")
        return self


class TrialConfig(_Section):
    seed: int = Field(0, description="trial seed: initialisation, data order, dropout")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    speech: SpeechConfig = Field(default_factory=SpeechConfig)

    @model_validator(mode="after")
    def _audio_needs_a_corpus(self) -> TrialConfig:
        if self.data.source == "audio" and not (self.speech.root or self.speech.manifest):
            raise ValueError("data.source is audio: set speech.root (LibriSpeech layout) or speech.manifest")
        return self


# A 32-wide model that trains in seconds on one CPU thread: the test suite's and `benchmarks.gpu --tiny`'s.
# Dotted keys, as a space file's `base` writes them; the depth is left to the user.
SMALL_MODEL: dict[str, Any] = {
    "model.d_model": 32,
    "model.heads": 2,
    "model.ffn_dim": 64,
    "model.frontend_channels": 8,
    "model.decoder_dim": 64,
    "model.embed_dim": 32,
    "model.attention_dim": 32,
}


RunKind = Literal["natural", "mitigation", "induced", "control"]
RUN_KINDS: tuple[str, ...] = RunKind.__args__


def run_kind(config: TrialConfig) -> RunKind:
    """What a run is, read off its config; the one place that decides it.

    * control: time reversed by construction (`model.control`): tests the detector, never a finding.
    * induced: training is pushed along the paper's mechanism: cross-attention forced onto any target but
      the centre frame (step 1), or self-attention scaled or scheduled (`mhsa_scale` != 1,
      `mhsa_scale_schedule`: step 2). A flip here answers "is the mechanism sufficient?", never "how often
      does it happen?", so it is counted apart from natural runs, mitigations on it included.
    * mitigation: one of the paper's mitigations (CTC aux, self-attention off early, cross-attention forced
      onto the centre frame) on otherwise natural training.
    * natural: none of the above.
    """
    m = config.model
    if m.control != "none":
        return "control"
    forced = m.forced_attention_steps + m.forced_attention_blend_steps > 0
    if m.mhsa_scale != 1.0 or m.mhsa_scale_schedule or (forced and m.forced_attention_at != "centre"):
        return "induced"
    if m.ctc_layers or m.self_attention_off_steps > 0 or forced:
        return "mitigation"
    return "natural"


def _error_key(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"] if not isinstance(part, int) or part == 0)


def _from_validation(exc: ValidationError, prefix: str = "") -> ConfigError:
    first = exc.errors()[0]
    key = ".".join(p for p in [prefix, _error_key(first)] if p)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        message += f" (got {first['input']!r})"
    return ConfigError(key, message)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"model.layers": 6}` -> `{"model": {"layers": 6}}`; nested input passes through."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, f"'{part}' is a value, not a section")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(nested(value))
        elif isinstance(value, dict):
            node[parts[-1]] = nested(value)
        else:
            node[parts[-1]] = value
    return tree


def build_config(*layers: dict[str, Any]) -> TrialConfig:
    """Merge dotted or nested overrides (later wins) onto the defaults and validate."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for section, value in nested(layer).items():
            if isinstance(value, dict) and isinstance(merged.get(section), dict):
                merged[section].update(value)
            else:
                merged[section] = value
    for section, value in merged.items():
        for key in value if isinstance(value, dict) else ():
            if f"{section}.{key}" in RENAMED_KEYS:
                raise ConfigError(f"{section}.{key}", renamed_key_message(f"{section}.{key}"))
    try:
        return TrialConfig.model_validate(merged)
    except ValidationError as exc:
        raise _from_validation(exc) from None


def renamed_key_message(key: str) -> str:
    """The one line that refuses an old key name: which key to write instead."""
    return f"renamed: use {RENAMED_KEYS[key]}"


def flatten(config: TrialConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config as `{"model.layers": 6, ...}` (lists stay values)."""
    tree = config.model_dump() if isinstance(config, BaseModel) else config
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def known_keys() -> set[str]:
    return set(flatten(TrialConfig()))


def parse_assignment(text: str) -> tuple[str, Any]:
    """`"model.layers=12"` -> `("model.layers", 12)`; the value is read as YAML (safely)."""
    if "=" not in text:
        raise ConfigError(text, "expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"unreadable value {raw!r}: {exc}") from None
    return key.strip(), value


def to_commented_yaml(config: TrialConfig) -> str:
    """The config as YAML with each key's description as a trailing comment."""
    lines = [f"seed: {config.seed}  # {TrialConfig.model_fields['seed'].description}"]
    for section in ("data", "model", "train", "detector", "speech"):
        lines.append(f"{section}:")
        part = getattr(config, section)
        for name, field in type(part).model_fields.items():
            value = yaml.safe_dump(getattr(part, name), default_flow_style=True).strip()
            value = value.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"  {name}: {value}  # {field.description}")
    return "\n".join(lines) + "\n"
