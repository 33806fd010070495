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
    dni = TrainConfig(method=Method.DNI).resolve()
    cdni = TrainConfig(method=Method.CDNI).resolve()
    assert (dni.fold_every, dni.synthesizer, dni.lr, dni.synthesizer_lr) == (3, SynthesizerKind.LOWRANK, 2e-4, 1e-4)
    assert TrainConfig(method=Method.DNI, fold_every=1).resolve().lr == 1e-4  # every batch's true gradient
    assert (cdni.fold_every, cdni.synthesizer, cdni.synthesizer_hidden) == (0, SynthesizerKind.LOWRANK, (16,))
    assert cdni.synthesizer_lr == 1e-3
    assert TrainConfig(method=Method.CDNI, width=1024).resolve().synthesizer_hidden == (64,)  # rank = width / 16
    unlocked = TrainConfig(method=Method.DNI, unlock="full").resolve()  # folding needs real inputs: paper's recipe
    assert unlocked.fold_every == 0 and unlocked.synthesizer is SynthesizerKind.MLP
    assert (unlocked.lr, unlocked.synthesizer_lr) == (3e-5, 1e-3)
    backprop = TrainConfig(method=Method.BACKPROP).resolve()
    assert (backprop.fold_every, backprop.lr, backprop.synthesizer) == (0, 1e-4, None)
    assert dni.resolve() == dni  # resolving twice changes nothing


def test_paper_recipe_is_the_papers_synthesizers_without_folding() -> None:
    dni = dataclasses.replace(TrainConfig(), **paper_recipe(Method.DNI)).validate().resolve()
    assert dni.synthesizer is SynthesizerKind.MLP and dni.synthesizer_hidden == (1024, 1024)
    assert dni.fold_every == 0 and dni.lr == 3e-5
    cdni = dataclasses.replace(TrainConfig(), **paper_recipe(Method.CDNI)).validate().resolve()
    assert cdni.synthesizer is SynthesizerKind.LINEAR and cdni.fold_every == 0


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
