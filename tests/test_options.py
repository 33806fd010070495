"""Every option that changes feed-forward training is tested by its effect: the CLI run with the option gives the
weights the library gives with the same setting, and other weights than without it (not its echo in a summary)."""

from __future__ import annotations

import pytest
import torch

from helpers import checkpoint_of, run_cli, write_fake_mnist
from synthgrad.config import Method, TrainConfig
from synthgrad.core import one_hot_context
from synthgrad.data import load_dataset
from synthgrad.training import batch_order, build_network

BASE = ["--layers", "3", "--width", "16", "--batch-size", "64", "--epochs", "1", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return write_fake_mnist(tmp_path_factory.mktemp("odata"), n_train=384, n_test=64)


def cli_weights(capfd, tmp_path, data, *args: str) -> list[dict]:
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, "train", *BASE, "--data-dir", data, "--out", out, *args)
    assert code == 0, err
    return [s["module"] for s in checkpoint_of(out)[1]["job"]["stages"]]


def library_weights(data, **settings) -> list[dict]:
    """The same run through the library: `decouple` via `build_network`, `train_step` on the same batches."""
    torch.set_num_threads(1)
    cfg = TrainConfig(layers=3, width=16, batch_size=64, epochs=1, **settings).resolve()
    ds = load_dataset("mnist", data)
    net = build_network(cfg, ds.input_shape, ds.num_classes)
    order = batch_order(cfg.seed, 1, len(ds.train_labels))
    for s in range(len(ds.train_labels) // 64):
        idx = order[s * 64 : (s + 1) * 64]
        y = ds.train_labels[idx]
        context = one_hot_context(y, 10) if cfg.method is Method.CDNI else None
        net.train_step(ds.train_images[idx], y, context, diagnose=s % 50 == 0)
    return [stage.state_dict() for stage in net.stages]


def equal(a: list[dict], b: list[dict]) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("args", "settings"),
    [
        (["--method", "dni", "--fold-every", "1"], {"method": Method.DNI, "fold_every": 1}),
        (["--method", "dni", "--fold-every", "0"], {"method": Method.DNI, "fold_every": 0}),
        (["--method", "cdni", "--update-prob", "0.5"], {"method": Method.CDNI, "update_prob": 0.5}),
        (["--method", "cdni", "--unlock", "full"], {"method": Method.CDNI, "unlock": "full"}),
        (["--method", "dni", "--synthesizer-lr", "0.01"], {"method": Method.DNI, "synthesizer_lr": 0.01}),
        (["--method", "cdni", "--synthesizer", "linear"], {"method": Method.CDNI, "synthesizer": "linear"}),
    ],
    ids=["fold-every-1", "fold-every-0", "update-prob", "unlock", "synthesizer-lr", "synthesizer"],
)
def test_an_option_trains_as_the_library_does_and_differently_from_the_default(capfd, tmp_path, data, args,
                                                                               settings) -> None:  # fmt: skip
    from synthgrad.synthesizers import SynthesizerKind

    settings = {k: SynthesizerKind(v) if k == "synthesizer" else v for k, v in settings.items()}
    with_option = cli_weights(capfd, tmp_path, data, *args)
    assert equal(with_option, library_weights(data, **settings))
    default = library_weights(data, **{"method": settings["method"]})
    assert not equal(with_option, default), f"{args} changed nothing"


def test_the_library_comparison_can_fail(data) -> None:
    """The equality above is not vacuous: another seed gives other weights."""
    a = library_weights(data, method=Method.DNI)
    assert equal(a, library_weights(data, method=Method.DNI))
    assert not equal(a, library_weights(data, method=Method.DNI, seed=1))
