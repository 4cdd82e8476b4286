"""Where a training step's time goes: a trial's steps split into their phases, in one run.

`StepTimeline(trial)` hooks the trial's model (module hooks, tensor gradient hooks, a wrapped loss; nothing
in the model changes) and `timeline.step()` runs one `trial.train_step()`, timing each phase as the wall time
between the marks that bound it:

    data              batch, SpecAugment, copy to the device (up to the frontend)
    frontend          the convolutional frontend
    encoder           absolute positions and the Conformer blocks
    decoder loop      the attention decoder over the label positions
    loss              CTC heads and the loss
    backward decoder  from the loss back to the encoder output (the decoder loop and the loss)
    backward encoder  back through the Conformer blocks to the frontend output
    backward frontend back through the frontend (its first convolution's kernel gets the last gradient)
    optimiser         gradient clipping, AdamW, the rest of the step

On CPU the clock is the calling thread's CPU time: with one thread (`torch.set_num_threads(1)`) every
operation, the backward pass included, runs in that thread, so the time between two marks is that phase's
cost, whatever else the machine runs. On CUDA it is wall time, and every mark synchronises the device first
(which itself slows the step a little).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from trainers.train import Trial

PHASES = (
    "data",
    "frontend",
    "encoder",
    "decoder loop",
    "loss",
    "backward decoder",
    "backward encoder",
    "backward frontend",
    "optimiser",
)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """Seconds to time work on `device` with: this thread's CPU time on CPU, wall time on CUDA."""
    return time.perf_counter if device.type == "cuda" else time.thread_time


class StepTimeline:
    """Phase times of a trial's training steps; `step()` runs one step and returns {phase: seconds}."""

    def __init__(self, trial: Trial):
        self.trial = trial
        self.marks: list[tuple[str, float]] = []
        self.losses: list[float] = []  # the training loss of every step taken through `step()`
        self.active = False
        self.clock = clock(trial.device)
        model = trial.model
        frontend, decoder = model.encoder.frontend, model.decoder
        frontend.register_forward_pre_hook(lambda *_: self.mark("data"))
        frontend.register_forward_hook(self._after_frontend)
        decoder.register_forward_pre_hook(self._before_decoder)
        decoder.register_forward_hook(lambda *_: self.mark("decoder loop"))
        frontend.convs[0].weight.register_post_accumulate_grad_hook(lambda _: self.mark("backward frontend"))
        loss = model.loss

        def timed_loss(*args, **kwargs):
            result = loss(*args, **kwargs)
            self.mark("loss")
            return result

        model.loss = timed_loss  # an instance attribute: this trial's model only

    def mark(self, phase: str) -> None:
        if self.active:
            synchronize(self.trial.device)
            self.marks.append((phase, self.clock()))

    def _mark_gradient(self, tensor: torch.Tensor, phase: str) -> None:
        """Mark `phase` when the backward pass reaches `tensor` (its gradient is complete)."""
        if self.active and tensor.requires_grad:
            tensor.register_hook(lambda _: self.mark(phase))

    def _after_frontend(self, _module, _inputs, output) -> None:
        self.mark("frontend")
        self._mark_gradient(output[0], "backward encoder")

    def _before_decoder(self, _module, inputs) -> None:
        self.mark("encoder")
        self._mark_gradient(inputs[1], "backward decoder")  # the encoder output the decoder attends to

    def step(self) -> dict[str, float]:
        """One `trial.train_step()`, split into PHASES (seconds; a phase that did not happen is 0)."""
        self.marks = []
        synchronize(self.trial.device)
        self.active = True
        started = self.clock()
        try:
            self.losses.append(self.trial.train_step())
            self.mark("optimiser")
        finally:
            self.active = False
        seconds = dict.fromkeys(PHASES, 0.0)
        previous = started
        for phase, at in self.marks:
            seconds[phase] += at - previous
            previous = at
        return seconds


def side_by_side(
    timelines: dict[str, StepTimeline], steps: int, *, warmup: int = 1, same_draws: bool = False
) -> dict[str, dict]:
    """{name: {phase: mean seconds}} over each trial's next `steps` training steps, the trials taking turns
    step by step (a machine's load then drifts alike over all of them), after `warmup` untimed steps each.
    `same_draws`: in each turn every trial starts from the same random state (its dropout draws), so that two
    trials of one config stay step for step alike."""
    total = {name: dict.fromkeys(PHASES, 0.0) for name in timelines}
    for index in range(warmup + steps):
        draws = torch.get_rng_state()
        for name, timeline in timelines.items():
            if same_draws:
                torch.set_rng_state(draws)
            phases = timeline.step()
            if index >= warmup:
                for phase, seconds in phases.items():
                    total[name][phase] += seconds / steps
    return total


def evaluation_seconds(trial: Trial) -> float:
    """Seconds (`clock`) of one detector evaluation of the trial's model, as the trial runs it."""
    now = clock(trial.device)
    synchronize(trial.device)
    started = now()
    trial.evaluate()
    synchronize(trial.device)
    return now() - started
