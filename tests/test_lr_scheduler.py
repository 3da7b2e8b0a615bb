"""The learning-rate multiplier schedule (sgm.lr_scheduler) against its formula, and the engine
stepping the optimizer's rate by it."""
from __future__ import annotations

import pytest
import torch
from conftest import ROOT

from sgm.config import build_model, load_config
from sgm.lr_scheduler import LambdaLinearScheduler

TARGET = "sgm.lr_scheduler.LambdaLinearScheduler"


def one_cycle(**overrides) -> LambdaLinearScheduler:
    params = {"warm_up_steps": [10], "f_start": [0.1], "f_max": [1.0], "f_min": [0.05], "cycle_lengths": [100]}
    return LambdaLinearScheduler(**{**params, **overrides})


@pytest.mark.parametrize("step, expected", [
    (0, 0.1),                          # f_start
    (5, 0.1 + 0.9 * 5 / 10),           # half-way up the warm-up
    (10, 0.05 + 0.95 * 90 / 100),      # warm-up done: on the decay line of the whole cycle
    (60, 0.05 + 0.95 * 40 / 100),
    (99, 0.05 + 0.95 * 1 / 100),
    (100, 0.05),                       # the cycle's end: f_min
    (10_000, 0.05),                    # past the last cycle: f_min
])
def test_one_cycle_follows_the_formula(step, expected):
    assert one_cycle().schedule(step) == pytest.approx(expected)


def test_each_cycle_starts_its_own_warm_up():
    schedule = LambdaLinearScheduler(warm_up_steps=[0, 4], f_start=[1.0, 0.0], f_max=[1.0, 2.0], f_min=[0.5, 0.0],
                                     cycle_lengths=[10, 20])
    assert schedule.schedule(0) == pytest.approx(1.0)
    assert schedule.schedule(5) == pytest.approx(0.5 + 0.5 * 5 / 10)
    assert schedule.schedule(10) == pytest.approx(0.0)         # second cycle, n = 0: its f_start
    assert schedule.schedule(12) == pytest.approx(2.0 * 2 / 4)  # n = 2 of a 4-step warm-up to 2.0
    assert schedule.schedule(20) == pytest.approx(2.0 * 10 / 20)


@pytest.mark.parametrize("overrides, message", [
    ({"f_min": [0.05, 0.1]}, "one value per cycle"),
    ({"cycle_lengths": [0]}, "cycle_lengths must be positive"),
    ({"warm_up_steps": [-1]}, "warm_up_steps must not be negative"),
])
def test_bad_lists_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        one_cycle(**overrides)


def test_the_engine_steps_the_learning_rate_by_the_schedule():
    config = load_config(ROOT / "configs" / "tiny-train-v01.yaml")
    config.model.params.scheduler_config = {"target": TARGET, "params": {
        "warm_up_steps": [2], "f_start": [0.5], "f_max": [1.0], "f_min": [0.0], "cycle_lengths": [4]}}
    model = build_model(config, random_pretrained_encoders=True)
    model.learning_rate = 1.0e-3
    (optimizer,), (entry,) = model.configure_optimizers()
    assert entry["interval"] == "step" and entry["frequency"] == 1
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        entry["scheduler"].step()
    assert rates == pytest.approx([5e-4, 7.5e-4, 5e-4, 2.5e-4, 0.0])


def test_without_a_schedule_the_engine_returns_the_optimizer_alone():
    model = build_model(load_config(ROOT / "configs" / "tiny-train-v01.yaml"), random_pretrained_encoders=True)
    model.learning_rate = 1.0e-3
    assert isinstance(model.configure_optimizers(), torch.optim.Optimizer)
