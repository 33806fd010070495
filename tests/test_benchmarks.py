"""The benchmarks' smoke modes run (`--quick`: a tiny model, a few steps; no figure of them means anything), so a
benchmark that a change has broken is found by CI, not by the next person who needs the figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data_dir
from helpers import write_fake_mnist

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def bench(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], env=ENV, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_time_to_accuracy_quick_runs_one_method_of_every_family(tmp_path) -> None:
    data = write_fake_mnist(tmp_path / "data", n_train=1024, n_test=64)
    out = tmp_path / "tta.json"
    r = bench("benchmarks/time_to_accuracy.py", "--quick", "--data-dir", data, "--json", out,
              "--methods", "single-1t,1f1b,stale,cdni", "--microbatches", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"single-1t", "1f1b", "stale", "cdni"}
    assert all("error" not in v and v["samples_per_s"] > 0 for v in results.values()), results
    assert results["1f1b"]["microbatches"] == 2 and out.with_suffix(".png").is_file()


def test_time_to_accuracy_reports_a_schedule_that_cannot_run_instead_of_failing(tmp_path) -> None:
    data = write_fake_mnist(tmp_path / "data", n_train=1024, n_test=64)
    out = tmp_path / "tta.json"  # DualPipeV needs at least as many micro-batches as virtual stages (4 at K = 2)
    r = bench("benchmarks/time_to_accuracy.py", "--quick", "--data-dir", data, "--json", out,
              "--methods", "dualpipev", "--microbatches", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(out.read_text())["results"]["dualpipev"]["error"]


def test_time_to_accuracy_quick_gpt_workload(tmp_path) -> None:
    data = shared_data_dir()
    if data is None or not (data / "ptb").is_dir():
        pytest.skip("Penn Treebank not found: set SYNTHGRAD_DATA_DIR or put ../shared/data beside the checkout")
    out = tmp_path / "tta.json"
    r = bench("benchmarks/time_to_accuracy.py", "--workload", "gpt", "--quick", "--data-dir", data, "--json", out,
              "--methods", "single-1t,stale,dni", "--microbatches", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert all(v["metric"] == "valid_bpc" and v["final_valid_bpc"] > 0 for v in results.values()), results


def test_transformer_time_quick(tmp_path) -> None:
    out = tmp_path / "t.json"
    r = bench("benchmarks/transformer.py", "time", "--quick", "--json", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(out.read_text())["synthesizer_cost"]


def test_gradient_delay_runs_a_few_steps(tmp_path) -> None:
    data = shared_data_dir()
    if data is None or not (data / "ptb").is_dir():
        pytest.skip("Penn Treebank not found: set SYNTHGRAD_DATA_DIR or put ../shared/data beside the checkout")
    out = tmp_path / "delay.json"
    r = bench("benchmarks/gradient_delay.py", "--data-dir", data, "--json", out, "--max-tokens", 4096,
              "--lower-beta1", 0.5, "--warmup", 2, "--cosine", 0.1, "--lower", 2)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    curve = json.loads(out.read_text())["curve"]
    assert [c["step"] for c in curve] == [1, 2] and all(3 < c["valid_bpc"] < 7 for c in curve), curve


@pytest.mark.parametrize("lever", [("--predict",), ("--compensate", 100)])
def test_gradient_delay_levers_against_staleness_run(tmp_path, lever) -> None:
    """Weight prediction and delay compensation (DC-ASGD) run a few delayed steps and score the model."""
    data = shared_data_dir()
    if data is None or not (data / "ptb").is_dir():
        pytest.skip("Penn Treebank not found: set SYNTHGRAD_DATA_DIR or put ../shared/data beside the checkout")
    out = tmp_path / "delay.json"
    r = bench("benchmarks/gradient_delay.py", "--data-dir", data, "--json", out, "--max-tokens", 8192, *lever)
    assert r.returncode == 0, r.stderr[-3000:]
    curve = json.loads(out.read_text())["curve"]
    assert len(curve) == 4 and all(3 < c["valid_bpc"] < 7 for c in curve), curve


def test_step_time_times_the_closed_form_against_autograd(tmp_path) -> None:
    """`step_time.py --variants` times a chosen subset beside backprop; the `_autograd` variants turn the closed-form
    fit off ([Note: closed-form fit]), and an unknown variant is refused by name."""
    out = tmp_path / "st.json"
    r = bench("benchmarks/step_time.py", "--quick", "--models", "mnist_fcn4", "--variants", "cdni,cdni_autograd",
              "--json", out)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(json.loads(out.read_text())["results"]["mnist_fcn4"]) == {"backprop", "cdni", "cdni_autograd"}
    r = bench("benchmarks/step_time.py", "--quick", "--variants", "cdni,nope", "--json", out)
    assert r.returncode == 2 and "unknown variant(s) nope" in r.stderr
