"""Evaluate a run (FID/KID/precision/recall/IS/class accuracy) or two real splits: see configs/evaluate.yaml."""

from diffusionlab.utils.allocator import tune_cpu_allocator

tune_cpu_allocator()  # before torch is imported (it reads THP_MEM_ALLOC_ENABLE once)

import hydra
from omegaconf import DictConfig

from diffusionlab.cli.errors import exit_on_user_error
from diffusionlab.cli.resolvers import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from diffusionlab.cli.evaluate import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
