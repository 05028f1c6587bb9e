"""evaluate.py end to end on a tiny run: metrics.json with the protocol, the data floor, a sampler sweep."""

from __future__ import annotations

import json

import pytest

from diffusionlab.cli.evaluate import evaluate
from tests.helpers import compose_cfg


@pytest.fixture
def eval_overrides(data_dir, shared_dir, tmp_path):
    weights = shared_dir / "weights" / "inception-2015-12-05-pool3.torchscript.pt"
    return [
        f"inception_weights={weights}",
        f"data_dir={data_dir}",
        f"cache_dir={tmp_path / 'cache'}",
        "classifier=false",
        "batch_size=16",
    ]


def test_evaluate_run_writes_metrics_json(trained_run, tmp_path, eval_overrides, capsys):
    out = tmp_path / "eval"
    cfg = compose_cfg(
        "evaluate.yaml",
        [
            f"ckpt={trained_run}",
            "num_samples=24",
            "steps=3",
            f"out_dir={out}",
            "precision=bf16-mixed",
            "channels_last=true",
            *eval_overrides,
        ],
        tmp_path / "h",
    )
    metrics = evaluate(cfg)
    written = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall", "class_accuracy", "inception_score", "protocol"):
        assert key in written
    p = written["protocol"]
    assert p["num_samples"] == 24 and p["sampler"] == "ddim" and p["steps"] == 3 and p["seed"] == 0
    assert p["reference"]["split"] == "mnist:test" and p["feature_extractor"]["sha256"]
    assert p["precision"] == "bf16-mixed" and p["channels_last"] is True
    assert p["sampler_opts"] == {"clip_x0": 1.0, "eta": 0.0}
    assert metrics["fid"] > 0 and 0 <= metrics["precision"] <= 1
    assert "FID" in capsys.readouterr().out


def test_evaluate_data_floor_is_below_model(tmp_path, eval_overrides):
    cfg = compose_cfg(
        "evaluate.yaml",
        ["mode=data", "a=mnist:train", "b=mnist:test", "num_samples=32", f"out_dir={tmp_path / 'd'}", *eval_overrides],
        tmp_path / "h",
    )
    same = evaluate(cfg)
    cfg = compose_cfg(
        "evaluate.yaml",
        [
            "mode=data",
            "a=fashion_mnist:test",
            "b=mnist:test",
            "num_samples=32",
            f"out_dir={tmp_path / 'e'}",
            *eval_overrides,
        ],
        tmp_path / "h2",
    )
    other = evaluate(cfg)
    assert same["fid"] < other["fid"] / 3, (same["fid"], other["fid"])


def test_evaluate_sweep_table_and_plot(trained_run, tmp_path, eval_overrides):
    out = tmp_path / "sweep"
    cfg = compose_cfg(
        "evaluate.yaml",
        [
            f"ckpt={trained_run}",
            "num_samples=16",
            "sweep.steps=[2,4]",
            "sweep.sampler=[ddim,dpmpp_2m]",
            f"out_dir={out}",
            *eval_overrides,
        ],
        tmp_path / "h",
    )
    result = evaluate(cfg)
    assert [(r["sampler"], r["steps"]) for r in result["rows"]] == [
        ("ddim", 2),
        ("ddim", 4),
        ("dpmpp_2m", 2),
        ("dpmpp_2m", 4),
    ]
    assert (out / "sweep_fid_vs_steps.png").stat().st_size > 1000
    assert "| dpmpp_2m | 4 |" in (out / "sweep.md").read_text()
