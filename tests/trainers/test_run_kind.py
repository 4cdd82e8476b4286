"""A run's kind (`trainers.config.run_kind`) read off its config: natural, mitigation, induced or control."""

from __future__ import annotations

import pytest

from trainers.config import RUN_KINDS, build_config, run_kind

FORCED = {"model.forced_attention_steps": 300, "model.forced_attention_blend_steps": 300}
CENTRE_FORCED = {**FORCED, "model.forced_attention_at": "centre"}
CASES = {
    "natural": [
        {},
        {"model.layers": 12, "train.steps": 5000, "model.pos_enc": "abs"},  # conditions, not interventions
        {"model.forced_attention_at": "first"},  # a target that is never forced: nothing is done
        {"model.mhsa_scale": 1.0, "model.mhsa_scale_from": 3},
    ],
    "mitigation": [
        {"model.ctc_layers": [2, 4]},
        {"model.self_attention_off_steps": 100},
        CENTRE_FORCED,
        {"model.forced_attention_blend_steps": 50},  # blending out of the centre from step 0
        {**CENTRE_FORCED, "model.ctc_layers": [2]},
    ],
    "induced": [
        {**FORCED, "model.forced_attention_at": "first"},
        {**FORCED, "model.forced_attention_at": "frame", "model.forced_attention_frames": 2},
        {**FORCED, "model.forced_attention_at": "window", "model.forced_attention_frames": 3},
        {"model.mhsa_scale": 3.0},
        {"model.mhsa_scale": 0.5},
        {"model.mhsa_scale_schedule": [[0, 3.0], [1000, 3.0], [3000, 1.0]]},
        {"model.mhsa_scale_schedule": [[0, 1.0], [1000, 1.0]]},  # a schedule, even a flat one
        # an induced run with a mitigation on it stays induced: never pooled with natural-kind mitigations
        {**FORCED, "model.forced_attention_at": "first", "model.ctc_layers": [2, 4]},
        {"model.mhsa_scale": 3.0, "model.self_attention_off_steps": 100},
        {**CENTRE_FORCED, "model.mhsa_scale_schedule": [[600, 1.0], [1600, 3.0]]},
    ],
    "control": [
        {"model.control": "reverse_encoder"},
        {
            "model.control": "reverse_encoder",
            "model.mhsa_scale": 3.0,
            **FORCED,
            "model.forced_attention_at": "first",
        },
    ],
}


@pytest.mark.parametrize(
    ("kind", "overrides"), [(kind, overrides) for kind, cases in CASES.items() for overrides in cases]
)
def test_the_kind_is_read_off_the_config(kind, overrides):
    assert run_kind(build_config(overrides)) == kind


def test_every_kind_is_covered():
    assert set(CASES) == set(RUN_KINDS)
