"""The default recipe and the paper's (issue #5): what the configs resolve to, and the ablation's rows."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from synthgrad.config import Method, TrainConfig, paper_recipe
from synthgrad.errors import ConfigError
from synthgrad.synthesizers import SynthesizerKind


def test_default_recipe() -> None:
    dni = TrainConfig(method=Method.DNI)
    cdni = TrainConfig(method=Method.CDNI)
    assert (dni.fold_interval(), dni.synthesizer_spec().kind, dni.module_lr(), dni.synthesizer_learning_rate()) == (
        3, SynthesizerKind.LOWRANK, 2e-4, 1e-4,
    )  # fmt: skip
    assert TrainConfig(method=Method.DNI, fold_every=1).module_lr() == 1e-4  # every batch's true gradient
    assert (cdni.fold_interval(), cdni.synthesizer_spec().kind, cdni.synthesizer_spec().hidden) == (
        0, SynthesizerKind.LOWRANK, (16,),
    )  # fmt: skip
    assert cdni.synthesizer_learning_rate() == 1e-3
    assert TrainConfig(method=Method.CDNI, width=1024).synthesizer_spec().hidden == (64,)  # rank = width / 16
    unlocked = TrainConfig(method=Method.DNI, unlock="full")  # folding needs real inputs: the paper's recipe
    assert unlocked.fold_interval() == 0 and unlocked.synthesizer_spec().kind is SynthesizerKind.MLP
    assert (unlocked.module_lr(), unlocked.synthesizer_learning_rate()) == (3e-5, 1e-3)


def test_paper_recipe_is_the_papers_synthesizers_without_folding() -> None:
    dni = dataclasses.replace(TrainConfig(), **paper_recipe(Method.DNI)).validate()
    assert dni.synthesizer_spec().kind is SynthesizerKind.MLP and dni.synthesizer_spec().hidden == (1024, 1024)
    assert dni.fold_interval() == 0 and dni.module_lr() == 3e-5
    cdni = dataclasses.replace(TrainConfig(), **paper_recipe(Method.CDNI)).validate()
    assert cdni.synthesizer_spec().kind is SynthesizerKind.LINEAR and cdni.fold_interval() == 0


def test_folding_is_refused_where_it_cannot_work() -> None:
    with pytest.raises(ConfigError, match="fold"):
        TrainConfig(method=Method.BACKPROP, fold_every=1).validate()
    with pytest.raises(ConfigError, match="unlock"):
        TrainConfig(method=Method.DNI, fold_every=1, unlock="full").validate()
    with pytest.raises(ConfigError, match="fold-every"):
        TrainConfig(method=Method.DNI, fold_every=-1).validate()


def test_every_ablation_row_is_a_valid_config() -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes.py"
    spec = importlib.util.spec_from_file_location("recipes", path)
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    assert "backprop" in recipes.RECIPES and len(recipes.RECIPES) > 5
    for why, overrides in recipes.RECIPES.values():
        assert why
        dataclasses.replace(TrainConfig(), **overrides).validate()
