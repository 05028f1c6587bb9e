"""Train (or verify) the cached domain classifier of a dataset from the shell.

    python -m diffusionlab.cli.classifier --dataset mnist --data-dir ../shared/datasets

Prints the cached file and its test accuracy; exits 1 below the dataset's target accuracy. The classifier
itself lives in :mod:`diffusionlab.metrics.classifier` (this module keeps ``python -m`` from importing it twice).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from diffusionlab.metrics.classifier import CLASSIFIER_DATASETS, TARGET_ACCURACY, ensure_classifier, load_classifier


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train (or load) the cached domain classifier of a dataset.")
    p.add_argument("--dataset", required=True, choices=list(CLASSIFIER_DATASETS))
    data_default = os.environ.get("DIFFUSIONLAB_DATA_DIR") or os.environ.get("DATA_DIR") or "data"
    p.add_argument("--data-dir", default=data_default, help="default: $DIFFUSIONLAB_DATA_DIR or ./data")
    p.add_argument("--cache-dir", default=None, help="default: $DIFFUSIONLAB_CACHE_DIR or ~/.cache/diffusionlab")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-train", type=int, default=None, help="train on a random subset of this size")
    p.add_argument("--max-test", type=int, default=None, help="measure accuracy on the first N test images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--force", action="store_true", help="retrain even if a checkpoint is cached")
    p.add_argument("--min-accuracy", type=float, default=None, help="exit 1 below it (default: the target)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    trained = ensure_classifier(
        args.dataset,
        args.data_dir,
        args.cache_dir,
        force=args.force,
        epochs=args.epochs,
        max_train=args.max_train,
        max_test=args.max_test,
        device=args.device,
    )
    _, info = load_classifier(args.dataset, args.cache_dir)
    print(f"{'trained' if trained else 'cached'} classifier {info['path']}")
    target = TARGET_ACCURACY[args.dataset] if args.min_accuracy is None else args.min_accuracy
    print(
        f"{args.dataset}: test accuracy {info['test_accuracy']:.4f} on {info['test_size']} images "
        f"(trained on {info['train_size']} for {info['epochs']} epochs, {info['seconds']} s); target {target}"
    )
    if info["test_accuracy"] < target:
        print(f"below the target accuracy {target}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
