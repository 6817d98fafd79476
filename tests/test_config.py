"""MASConfig checks types as well as values, at construction and on every assignment (issue 13, case 11)."""

from __future__ import annotations

import pytest

from masllm import EWCConfig, MASConfig


@pytest.mark.parametrize(
    "field,value,error",
    [
        ("half_penalty", "no", TypeError),  # a non-empty string is truthy: it used to halve the penalty
        ("half_penalty", 1, TypeError),
        ("reg_lambda", True, TypeError),  # bool is not a number
        ("reg_lambda", "0.1", TypeError),
        ("importance_batch_size", 2.0, TypeError),
        ("max_importance_samples", True, TypeError),
        ("storage_dtype", "float16", ValueError),  # not one of the literals
        ("output", "logit", ValueError),
    ],
)
def test_wrong_types_are_refused_at_construction(field, value, error):
    with pytest.raises(error, match=f"MASConfig.{field}"):
        MASConfig(**{field: value})


def test_literal_error_suggests_the_close_name():
    with pytest.raises(ValueError, match="did you mean 'logits'"):
        MASConfig(output="logit")


@pytest.mark.parametrize(
    "field,value,error",
    [("reg_lambda", -5, ValueError), ("reg_lambda", True, TypeError), ("half_penalty", "no", TypeError),
     ("merge", "max", ValueError), ("merge_decay", 2.0, ValueError)],
)  # fmt: skip
def test_assignment_is_validated_and_the_old_value_kept(field, value, error):
    """`c.reg_lambda = -5` used to turn the penalty off silently."""
    config = MASConfig(reg_lambda=0.5)
    before = config.to_dict()
    with pytest.raises(error, match=field):
        setattr(config, field, value)
    assert config.to_dict() == before and config.penalty_weight == 0.5


def test_valid_values_still_accepted():
    config = MASConfig(reg_lambda=2, half_penalty=True, max_importance_samples=None)  # an int is a float
    config.reg_lambda = 0.25
    assert config.penalty_weight == 0.125
    assert EWCConfig(method="ewc", ewc_sampled=True).ewc_sampled is True
    with pytest.raises(TypeError, match="EWCConfig.ewc_sampled"):
        EWCConfig(method="ewc", ewc_sampled="yes")
