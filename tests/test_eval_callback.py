"""The evaluation callback inside real tiny trainings on MNIST: logged eval/* metrics, eval_history.json,
best-by-FID checkpoint, the same numbers as evaluate.py on the exported EMA weights, and DDP (2 processes)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from diffusionlab.cli.evaluate import evaluate
from diffusionlab.cli.train import train
from diffusionlab.lit.eval_callback import EvalCallback, batch_plan, read_history
from diffusionlab.metrics.classifier import train_classifier
from tests.helpers import compose_cfg, run_script, train_overrides

N, BATCH, STEPS = 24, 12, 3


def shared_eval_cache(tmp_path_factory, data_dir):
    """One cache for the evaluation tests of a session: reference features and a quickly trained MNIST classifier
    (class accuracy needs one; its quality is not what these tests check)."""
    from diffusionlab.metrics.classifier import classifier_path

    cache = tmp_path_factory.getbasetemp() / "eval-cache"
    if not classifier_path("mnist", cache).is_file():
        train_classifier("mnist", data_dir, cache_dir=cache, epochs=1, max_train=1000, max_test=200, progress=False)
    return cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, data_dir):
    return shared_eval_cache(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def weights(shared_dir):
    return shared_dir / "weights" / "inception-2015-12-05-pool3.torchscript.pt"


def _eval_overrides(cache_dir, weights, *extra):
    return [
        "callbacks=with_eval",
        f"paths.cache_dir={cache_dir}",
        f"callbacks.eval.inception_weights={weights}",
        f"callbacks.eval.num_samples={N}",
        f"callbacks.eval.batch_size={BATCH}",
        f"callbacks.eval.steps={STEPS}",
        "callbacks.eval.progress=false",
        "callbacks.sample_grid.every_n_epochs=0",
        *extra,
    ]


def _evaluate_exported(run, data_dir, cache_dir, weights, tmp_path, classifier="auto"):
    """evaluate.py's numbers for the run's exported EMA weights with the callback's protocol."""
    cfg = compose_cfg(
        "evaluate.yaml",
        [
            f"ckpt={run}",
            f"num_samples={N}",
            f"batch_size={BATCH}",
            f"steps={STEPS}",
            f"inception_weights={weights}",
            f"data_dir={data_dir}",
            f"cache_dir={cache_dir}",
            f"classifier={classifier}",
            f"out_dir={tmp_path / 'evaluate'}",
        ],
        tmp_path / "h",
    )
    return evaluate(cfg)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, data_dir, cache_dir, weights):
    """2 epochs of 2 steps each, an evaluation after every epoch (each FID costs seconds: keep them few)."""
    run = tmp_path_factory.mktemp("eval-cb") / "run"
    overrides = train_overrides(
        data_dir,
        "data.train_subset=64",
        "trainer.max_epochs=2",
        "trainer.max_steps=-1",
        "trainer.log_every_n_steps=1",
        *_eval_overrides(cache_dir, weights),
    )
    metrics = train(compose_cfg("train.yaml", overrides, run))
    return run, metrics


def test_callback_logs_metrics_and_writes_history(eval_run):
    run, metrics = eval_run
    history = read_history(run / "eval_history.json")
    entries = history["evaluations"]
    assert [e["global_step"] for e in entries] == [2, 4]
    assert [e["epoch"] for e in entries] == [0, 1]
    for e in entries:
        assert e["num_samples"] == N and e["protocol"]["num_samples"] == N
        assert e["protocol"]["steps"] == STEPS and e["protocol"]["weights"] == "ema"
        assert e["protocol"]["reference"]["split"] == "mnist:test" and e["protocol"]["reference"]["n"] == N
        assert e["fid"] > 0 and e["kid_std"] >= 0 and 0 <= e["class_accuracy"] <= 1 and e["domain_fid"] > 0
        assert set(e["val"]) >= {"val/loss", "val/loss_ema"}
    assert history["monitor"] == "eval/fid"
    assert history["best_step"] == min(entries, key=lambda e: e["fid"])["global_step"]

    # what train.py returns to sweepers, and what the CSV logger got: one row per evaluation
    last = entries[-1]
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall", "class_accuracy", "domain_fid"):
        assert metrics[f"eval/{key}"] == pytest.approx(last[key], rel=1e-6), key
    with open(run / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/fid")]
    assert [int(r["step"]) for r in rows] == [1, 3]  # Lightning logs epoch-end values at global_step - 1
    assert [float(r["eval/fid"]) for r in rows] == pytest.approx([e["fid"] for e in entries], rel=1e-6)


def test_best_fid_checkpoint_tracks_the_lowest_fid(eval_run):
    run, _ = eval_run
    entries = read_history(run / "eval_history.json")["evaluations"]
    path = run / "checkpoints" / "best_fid.ckpt"
    assert path.is_file()
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    best = min(entries, key=lambda e: e["fid"])
    assert ckpt["global_step"] == best["global_step"]
    states = [v for k, v in ckpt["callbacks"].items() if "eval/fid" in k]
    assert states and float(states[0]["best_model_score"]) == pytest.approx(best["fid"], rel=1e-6)


def test_callback_numbers_equal_evaluate_cli(eval_run, data_dir, cache_dir, weights, tmp_path):
    """The last evaluation used the final EMA weights, which the run exports: evaluate.py must agree."""
    run, _ = eval_run
    last = read_history(run / "eval_history.json")["evaluations"][-1]
    ref = _evaluate_exported(run, data_dir, cache_dir, weights, tmp_path)
    assert ref["protocol"]["global_step"] == last["global_step"]
    for key in ("fid", "kid_mean", "precision", "recall", "class_accuracy", "domain_fid"):
        assert np.isclose(ref[key], last[key], rtol=1e-4, atol=1e-6), (key, ref[key], last[key])


def test_batch_plan_is_independent_of_world_size():
    single = batch_plan(50, 8, 0, 1)
    assert [(s, b) for _, s, b in single] == [(s, min(8, 50 - s)) for s in range(0, 50, 8)]
    assert [i for i, _, _ in single] == list(range(7))
    two = sorted(batch_plan(50, 8, 0, 2) + batch_plan(50, 8, 1, 2))
    assert two == single
    # fewer global batches than ranks: the batch shrinks so that every rank samples something
    parts = [batch_plan(10, 8, r, 4) for r in range(4)]
    assert all(parts) and sum(b for p in parts for _, _, b in p) == 10
    with pytest.raises(ValueError, match="smaller than the number of processes"):
        batch_plan(3, 8, 0, 4)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"num_samples": 1}, "num_samples must be an integer >= 2"),
        ({"every_n_epochs": -1}, "every_n_epochs"),
        ({"classifier": "yes"}, "classifier must be one of"),
        ({"monitor": "eval/recall"}, r"monitor must be one of \['eval/fid'"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        EvalCallback(reference="mnist:test", data_dir=".", **kw)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_evaluation(data_dir, cache_dir, weights, tmp_path):
    """train.py with 2 gloo processes: each rank samples its share, features are gathered; the FID of the final
    EMA weights equals evaluate.py's single-process FID of the exported weights."""
    run = tmp_path / "ddp"
    result = run_script(
        "train.py",
        *train_overrides(
            data_dir,
            "trainer=ddp_cpu",
            "data.train_subset=128",
            "trainer.max_steps=2",
            "callbacks.eval.classifier=false",
            f"hydra.run.dir={run}",
            *_eval_overrides(cache_dir, weights),
        ),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    entries = read_history(run / "eval_history.json")["evaluations"]
    assert len(entries) == 1 and entries[0]["protocol"]["world_size"] == 2
    ref = _evaluate_exported(run, data_dir, cache_dir, weights, tmp_path, classifier="false")
    assert ref["protocol"]["global_step"] == entries[0]["global_step"] == 2
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert np.isclose(ref[key], entries[0][key], rtol=1e-4, atol=1e-6), (key, ref[key], entries[0][key])
