"""Unconditional models end to end with the entry points' tasks on tiny budgets: ``train.py
data.conditional=false`` (network without class embedding, the evaluation callback, a grid without class rows),
``sample.py`` (refuses ``class=`` and guidance; the script exits with the message), ``evaluate.py`` (FID etc.
without class accuracy, the reason in ``metrics.json``, and the Inception Score of a TorchScript extractor with
logits checked against numpy) and the sweep report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from diffusionlab.cli.evaluate import evaluate, sample_batches
from diffusionlab.cli.report import make_report
from diffusionlab.cli.runs import load_run
from diffusionlab.cli.sample import sample
from diffusionlab.cli.train import train
from diffusionlab.lit.eval_callback import read_history
from diffusionlab.nets import count_parameters
from tests.helpers import compose_cfg, run_script, train_overrides
from tests.test_inception_score import inception_input_reference, save_tiny_inception

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)

N, BATCH, STEPS, PER_CLASS, SIDE = 16, 8, 2, 2, 28  # SIDE: tests.helpers.TINY_UNET trains on 28x28


@pytest.fixture(scope="module")
def tiny_inception(tmp_path_factory):
    """``(path of the scripted network, the eager network)``: what ``inception_weights=<path>`` loads."""
    path = tmp_path_factory.mktemp("extractor") / "tiny_inception_with_logits.pt"
    return path, save_tiny_inception(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, tiny_inception):
    """2 training steps of an unconditional tiny UNet with the evaluation callback (tiny extractor)."""
    folder = tmp_path_factory.mktemp("uncond") / "run"
    overrides = train_overrides(
        data_dir,
        "data.conditional=false",
        "data.train_subset=64",
        "trainer.max_steps=2",
        "callbacks=with_eval",
        f"paths.cache_dir={folder.parent / 'cache'}",
        f"callbacks.eval.inception_weights={tiny_inception[0]}",
        "callbacks.eval.classifier=false",
        f"callbacks.eval.num_samples={N}",
        f"callbacks.eval.batch_size={BATCH}",
        f"callbacks.eval.steps={STEPS}",
        "callbacks.eval.progress=false",
        f"callbacks.sample_grid.per_class={PER_CLASS}",
        "callbacks.sample_grid.steps=2",
    )
    train(compose_cfg("train.yaml", overrides, folder))
    return folder


def _eval_overrides(run, tiny_inception, data_dir, out):
    return [
        f"ckpt={run}",
        f"num_samples={N}",
        f"batch_size={BATCH}",
        f"steps={STEPS}",
        f"inception_weights={tiny_inception[0]}",
        "classifier=false",
        f"data_dir={data_dir}",
        f"cache_dir={run.parent / 'cache'}",
        f"out_dir={out}",
    ]


def grid_size(n: int, nrow: int, side: int = SIDE, scale: int = 2) -> tuple[int, int]:
    """(width, height) of ``utils.images.make_grid`` (2 px padding) scaled by ``scale``, with no label margin."""
    rows = -(-n // nrow)
    return ((nrow * (side + 2) + 2) * scale, (rows * (side + 2) + 2) * scale)


def test_training_builds_an_unconditional_network_and_evaluates_it(run):
    loaded = load_run(run)
    assert loaded.cfg.model.num_classes is None and loaded.cfg.data.conditional is False
    assert loaded.net.num_classes is None and loaded.net.class_embed is None
    assert not any("class_embed" in k for k in loaded.net.state_dict())

    (grid,) = sorted((run / "samples").glob("*.png"))  # one grid at the end of fit, per_class * 10 images
    assert Image.open(grid).size == grid_size(PER_CLASS * 10, PER_CLASS)  # no class-label margin

    (entry,) = read_history(run / "eval_history.json")["evaluations"]
    assert entry["global_step"] == 2 and entry["fid"] > 0 and entry["inception_score"] >= 1.0
    assert entry["class_accuracy"] is None and entry["protocol"]["conditional"] is False
    assert any(n.startswith("class_accuracy: absent") and "no labels" in n for n in entry["protocol"]["notes"])


def test_sample_py_writes_an_unlabelled_grid_and_refuses_classes(run, tmp_path):
    out = tmp_path / "samples"
    grid = sample(compose_cfg("sample.yaml", [f"ckpt={run}", "n=6", "nrow=3", "steps=2", f"out_dir={out}"], out))
    assert Image.open(grid).size == grid_size(6, 3)

    refused = run_script("sample.py", f"ckpt={run}", "class=3", "steps=2", f"out_dir={out}")
    assert refused.returncode == 2
    assert "class=3 given, but this model is unconditional" in refused.stderr and "Traceback" not in refused.stderr

    cfg = compose_cfg("sample.yaml", [f"ckpt={run}", "guidance=3", "steps=2", f"out_dir={out}"], tmp_path / "h")
    with pytest.raises(ValueError, match="guidance=3 needs class labels.*this model is unconditional"):
        sample(cfg)


def numpy_inception_score(logits: np.ndarray, splits: int, seed: int = 2020) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split, mean and std over the splits, in float64 (the samples shuffled with
    numpy's RandomState(seed) and split at i * N // splits, the protocol torch-fidelity and metrics.json use)."""
    logits = logits[np.random.RandomState(seed).permutation(len(logits))].astype(np.float64)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    n, scores = len(logits), []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = np.log(np.exp(part).mean(0, keepdims=True))
        scores.append(np.exp((np.exp(part) * (part - log_marginal)).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_evaluate_py_reports_fid_and_inception_score_without_class_accuracy(run, tiny_inception, data_dir, tmp_path):
    out = tmp_path / "eval"
    evaluate(compose_cfg("evaluate.yaml", _eval_overrides(run, tiny_inception, data_dir, out), out))
    m = json.loads((out / "metrics.json").read_text())
    p = m["protocol"]
    assert m["fid"] > 0 and m["kid_mean"] is not None and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert m["class_accuracy"] is None and p["conditional"] is False and p["guidance"] == 1.0
    assert any(n.startswith("class_accuracy: absent") and "unconditional" in n for n in p["notes"])
    assert not any(n.startswith("inception_score") for n in p["notes"])
    assert p["feature_extractor"]["has_logits"] and p["feature_extractor"]["num_features"] == 16
    assert p["inception_score"] == {"splits": 10}

    # the oracle: the same samples (evaluate.py's seeds), the eager network, numpy's Inception Score
    run_ = load_run(run)
    images = torch.cat([x for x, _ in sample_batches(run_, N, BATCH, 0, steps=STEPS, sampler_opts={"clip_x0": 1.0})])
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # as a saved PNG holds them
    with torch.no_grad():
        _, logits = tiny_inception[1](inception_input_reference(u8))
    mean, std = numpy_inception_score(logits.numpy(), splits=10)
    assert m["inception_score"] == pytest.approx(mean, rel=1e-5)
    assert m["inception_score_std"] == pytest.approx(std, rel=1e-4, abs=1e-7)
    assert m["inception_score"] > 1.0  # 1 would mean the same class distribution for every sample


def test_guidance_is_refused_before_any_sampling(run, tiny_inception, data_dir, tmp_path):
    overrides = [*_eval_overrides(run, tiny_inception, data_dir, tmp_path), "guidance=2"]
    cfg = compose_cfg("evaluate.yaml", overrides, tmp_path)
    with pytest.raises(ValueError, match="guidance=2 needs class labels"):
        evaluate(cfg)


def test_report_runs_on_unconditional_runs(run, tiny_inception, capsys):
    overrides = [
        f"num_samples={N}",
        f"batch_size={BATCH}",
        f"steps={STEPS}",
        f"sweep.steps=[{STEPS}]",
        f"inception_weights={tiny_inception[0]}",
        "classifier=false",
    ]
    summary = make_report(run.parent, overrides, group_by="data.conditional", floor=False)
    assert summary["group_order"] == ["False"]
    group = summary["groups"]["False"]
    assert group["fid"]["mean"] > 0 and group["class_accuracy"]["mean"] is None
    text = (run.parent / "report" / "report.md").read_text()
    assert "| False | 1 |" in text and "n/a" in text


@pytest.mark.parametrize(
    "experiment, parameters",
    [("mnist_uncond", None), ("cifar10_uncond", 35_746_307)],  # google/ddpm-cifar10-32: Ho et al.'s network
)
def test_unconditional_experiments_build_networks_without_classes(experiment, parameters, tmp_path):
    cfg = compose_cfg("train.yaml", [f"experiment={experiment}"], tmp_path)
    assert cfg.data.conditional is False and cfg.model.num_classes is None
    with torch.device("meta"):
        net = instantiate(cfg.model)
    assert net.num_classes is None
    if parameters is not None:
        assert count_parameters(net) == parameters


def test_conditional_switch_is_checked(tmp_path):
    cfg = compose_cfg("train.yaml", ["data.conditional=maybe"], tmp_path)
    with pytest.raises(Exception, match="data.conditional must be true or false, got 'maybe'"):
        _ = cfg.model.num_classes  # resolving the interpolation is the check
    cond = compose_cfg("train.yaml", ["experiment=seed_mnist"], tmp_path)
    assert cond.data.conditional is True and cond.model.num_classes == 10


def test_latent_models_switch_with_the_same_key(tmp_path):
    cfg = compose_cfg("train.yaml", ["experiment=mnist_ldm", "data.conditional=false"], tmp_path)
    assert cfg.model.num_classes is None and cfg.data.images.conditional is False
