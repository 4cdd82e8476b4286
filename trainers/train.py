"""One flipsweep trial: train a Conformer AED on the synthetic corpus and label it with the flip detector.

    python -m trainers.train [CONFIG.yaml] [--set key=value ...] --out DIR
    python -m trainers.train --print-config

A trial is the plain function `run_trial(config, out_dir)`; it knows nothing of Ray or MLflow. It writes
`out_dir/result.json` (the trial's outcome, `trainers.outcome.TrialOutcome`, with the last evaluation and
the config), `out_dir/metrics.jsonl` (one line per evaluation), `attention_maps/step_<step>.png` (one
utterance's cross-attention per evaluation), `attention.png` and `gradients.png`, and keeps `state.pt` so that
a call on the same `out_dir` resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from trainers.config import (
    ConfigError,
    TrainConfig,
    TrialConfig,
    build_config,
    flatten,
    parse_assignment,
    run_kind,
    to_commented_yaml,
)
from trainers.corpus import Corpus, CorpusError
from trainers.data import SyntheticCorpus, TrainStream, heldout_batches
from trainers.detector.evaluate import evaluate
from trainers.detector.plots import plot_attention, plot_gradients
from trainers.detector.verdict import Evaluation, should_stop, transient, verdict
from trainers.model.aed import ConformerAED
from trainers.model.forcing import learned_share
from trainers.outcome import RESULT_FILE, TrialCost, TrialOutcome, attention_map_path
from trainers.reported import RUNNING_PHASE
from trainers.specaugment import mask_generator, spec_augment

# report(metrics, checkpoint_dir): called after every evaluation; checkpoint_dir is set when resumable state
# was just saved there (the Ray wrapper turns it into a Tune checkpoint).
Reporter = Callable[[dict[str, Any], Path | None], None]

STATE_FILE = "state.pt"

# one_cycle: the fraction of training at which the learning rate is back at lr_start, and the final
# stretch after it that anneals to lr_final (1 - ANNEAL_START, written out: 1 - 0.9 is not 0.1 in floats).
ANNEAL_START = 0.9
ANNEAL_LENGTH = 0.1


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The learning rate at `step` (0-based) of `cfg.steps`.

    one_cycle (the paper's, epoch-wise there): lr_start -> lr_peak linearly over the warmup fraction, back to
    lr_start at ANNEAL_START (90 %) of training, then down to lr_final. warmup_constant: 0 -> lr_peak, then
    constant.
    """
    progress = step / cfg.steps
    warmup = cfg.lr_warmup
    if cfg.lr_schedule == "warmup_constant":
        return cfg.lr_peak * min(1.0, progress / warmup) if warmup > 0 else cfg.lr_peak
    if progress < warmup:
        return cfg.lr_start + (cfg.lr_peak - cfg.lr_start) * progress / warmup
    if progress < ANNEAL_START:
        return cfg.lr_peak + (cfg.lr_start - cfg.lr_peak) * (progress - warmup) / (ANNEAL_START - warmup)
    return cfg.lr_start + (cfg.lr_final - cfg.lr_start) * (progress - ANNEAL_START) / ANNEAL_LENGTH


def make_corpus(config: TrialConfig) -> Corpus:
    """The corpus a trial config names (`data.source`): the synthetic one, or speech read from disk."""
    if config.data.source == "audio":
        from trainers.speech.corpus import (
            SpeechCorpus,  # lazy: synthetic trials never import the speech stack
        )

        return SpeechCorpus(config.speech, config.data.seed)
    return SyntheticCorpus(config.data)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


# The layers whose weight matrices and kernels are decayed. Everything else is not: biases, norms, embedding
# tables and learned position tables (the paper excludes embeddings and learned positions).
DECAYED_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.LSTMCell)


def decayed_weights(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    """The parameters that get weight decay, chosen by what they are (nanoGPT's rule): the >= 2-D weights
    of the layers in DECAYED_LAYERS."""
    return {
        parameter
        for module in model.modules()
        if isinstance(module, DECAYED_LAYERS)
        for parameter in module.parameters(recurse=False)
        if parameter.ndim >= 2
    }


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Decoder groups carry their own LR multiplier: a slow decoder leaves the encoder to adapt to it.
    decayed = decayed_weights(model)
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        groups.setdefault((name.startswith("decoder."), parameter not in decayed), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": 0.0 if not_decayed else cfg.weight_decay,
                "lr_scale": cfg.decoder_lr_scale if in_decoder else 1.0,
            }
            for (in_decoder, not_decayed), params in sorted(groups.items())
        ],
        lr=cfg.lr_start,
        eps=cfg.adam_eps,
    )


class Trial:
    """State of one training run; `run()` trains, evaluates and writes the outputs."""

    def __init__(self, config: TrialConfig, out_dir: Path, *, report: Reporter | None = None, log=print):
        self.cfg = config
        self.out_dir = out_dir
        self.report = report
        self.log = log
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.device = _device(config.train)
        torch.manual_seed(config.seed)
        self.corpus = make_corpus(config)
        self.stream = TrainStream(
            self.corpus, (config.data.seed, config.seed), config.train.batch_size, config.data.bucket_batches
        )
        heldout = heldout_batches(self.corpus, config.detector.utterances, config.detector.batches)
        self.heldout = [batch.to(self.device) for batch in heldout]
        self.model = ConformerAED(config.model, self.corpus.feature_dim, self.corpus.vocab_size).to(
            self.device
        )
        self.optimizer = _optimizer(self.model, config.train)
        self.step = 0
        self.history: list[Evaluation] = []
        self.train_seconds = 0.0
        self.detector_seconds = 0.0
        self.losses: list[float] = []

    # -- persistence ---------------------------------------------------------------------------------
    def save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "history": self.history,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "seconds": (self.train_seconds, self.detector_seconds),
        }
        tmp = self.out_dir / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out_dir / STATE_FILE)  # atomic: a kill mid-save leaves the previous state

    def restore(self) -> bool:
        path = self.out_dir / STATE_FILE
        if not path.exists():
            return False
        # Our own file: the history holds detector dataclasses, so full unpickling is needed.
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.history = state["history"]
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.train_seconds, self.detector_seconds = state["seconds"]
        self._rewrite_metrics()
        return True

    def _rewrite_metrics(self) -> None:
        with open(self.out_dir / "metrics.jsonl", "w") as f:
            for evaluation in self.history:
                f.write(json.dumps(evaluation.to_dict()) + "\n")

    # -- training --------------------------------------------------------------------------------------
    def train_step(self) -> float:
        cfg = self.cfg.train
        batch = self.stream.batch(self.step)  # may be cached (bucketed pools): never modified in place
        generator = mask_generator(self.cfg.seed, self.step)
        features = spec_augment(batch.features, batch.feature_lengths, self.step, cfg, generator)
        batch = replace(batch, features=features).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr_scale"] * learning_rate(self.step, cfg)
        self.model.train()
        self.model.set_step(self.step)
        autocast = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and self.device.type == "cuda"
        )
        with autocast:
            out = self.model(batch.features, batch.feature_lengths, batch.labels, batch.label_lengths)
            loss, _ = self.model.loss(out, cfg.label_smoothing, cfg.ctc_scale)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.item()

    def evaluate(self) -> Evaluation:
        started = time.perf_counter()
        evaluation = evaluate(
            self.model,
            self.heldout,
            self.step,
            self.cfg.detector,
            self.cfg.model.subsampling,
            self.cfg.train.label_smoothing,
        )
        # One utterance's cross-attention per evaluation: a sweep logs these by step, to watch a flip happen.
        plot_attention(
            attention_map_path(self.out_dir, self.step), evaluation.arrays, utterances=1, step=self.step
        )
        self.detector_seconds += time.perf_counter() - started
        return evaluation

    def run(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.restore()
        if resumed:
            self.log(f"resumed at step {self.step}")
        cfg, every = self.cfg, self.cfg.detector.every
        evaluations_since_save = 0
        while self.step < cfg.train.steps and not should_stop(self.history, cfg.detector):
            started = time.perf_counter()
            self.losses.append(self.train_step())
            self.train_seconds += time.perf_counter() - started
            if self.step % every and self.step != cfg.train.steps:
                continue
            evaluation = self.evaluate()
            self.history.append(evaluation)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(evaluation.to_dict()) + "\n")
            evaluations_since_save += 1
            saved = None
            if evaluations_since_save >= cfg.train.checkpoint_every or self.step == cfg.train.steps:
                self.save()
                evaluations_since_save = 0
                saved = self.out_dir
            metrics = self._metrics(evaluation)
            self.log(
                f"step {self.step:6d}  loss {metrics['train_loss']:.3f}  acc {evaluation.accuracy:.2f}  "
                f"attention {evaluation.attention_direction:+.2f} (peak {evaluation.attention_peak:.2f})  "
                f"encoder {evaluation.block_directions[-1]:+.2f}  {evaluation.label}"
            )
            if self.report:
                self.report(metrics, saved)
        return self.finish()

    def _metrics(self, evaluation: Evaluation) -> dict[str, Any]:
        recent = self.losses[-self.cfg.detector.every :]
        metrics = evaluation.metrics()
        # The backward phase so far: every report carries it, so a search can optimise it (Tune checks that
        # each intermediate result holds the objective).
        phase = transient(self.history, self.cfg.detector)
        metrics.update({k: phase[k] for k in RUNNING_PHASE})
        metrics.update(
            step=self.step,
            train_loss=sum(recent) / len(recent) if recent else math.nan,
            learning_rate=learning_rate(max(self.step - 1, 0), self.cfg.train),
            mhsa_scale=self.model.encoder.mhsa_scale_at(max(self.step - 1, 0)),
            learned_attention_share=learned_share(max(self.step - 1, 0), self.cfg.model),
            label=evaluation.label,
        )
        return metrics

    def finish(self) -> dict[str, Any]:
        if not self.history or self.history[-1].step != self.step or not self.history[-1].arrays:
            self.history.append(self.evaluate())  # e.g. resumed after the last evaluation lost its arrays
        final = self.history[-1]
        cost = TrialCost(
            train_seconds=self.train_seconds,
            detector_seconds=self.detector_seconds,
            detector_share=self.detector_seconds / max(self.train_seconds + self.detector_seconds, 1e-9),
            steps_per_second=self.step / max(self.train_seconds, 1e-9),
            device=str(self.device),
        )
        outcome = TrialOutcome.from_verdict(
            verdict(self.history, self.cfg.detector),
            kind=run_kind(self.cfg),
            steps_done=self.step,
            early_stopped=self.step < self.cfg.train.steps,
            cost=cost,
        )
        # The outcome is the trial's answer (trainers.outcome); `final` and `config` are the record behind it.
        result = {"outcome": outcome.to_dict(), "final": final.to_dict(), "config": flatten(self.cfg)}
        plot_attention(self.out_dir / "attention.png", final.arrays)
        plot_gradients(self.out_dir / "gradients.png", final.arrays)
        text = json.dumps(result, indent=2, default=_json_default) + "\n"
        (self.out_dir / RESULT_FILE).write_text(text)
        return result


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def run_trial(
    config: TrialConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    report: Reporter | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one trial to its verdict and return result.json's content. Resumes from `out_dir` if it can."""
    if not isinstance(config, TrialConfig):
        config = build_config(config)
    return Trial(config, Path(out_dir), report=report, log=log).run()


def load_config_file(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: expected a mapping of config keys")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="YAML file of config keys (nested or dotted)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    parser.add_argument("--out", help="output directory (resumes if it holds state)")
    parser.add_argument("--print-config", action="store_true", help="print the full config as YAML and exit")
    args = parser.parse_args(argv)
    try:
        layers = [load_config_file(args.config)] if args.config else []
        layers.append(dict(parse_assignment(item) for item in args.set))
        config = build_config(*layers)
    except (ConfigError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_commented_yaml(config), end="")
        return 0
    if not args.out:
        parser.error("--out is required to train")
    try:
        result = run_trial(config, args.out)
    except CorpusError as exc:  # a bad speech corpus, found before anything was written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = result["outcome"]
    print(json.dumps({k: summary.get(k) for k in ("label", "flip_block", "time_to_flip")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
