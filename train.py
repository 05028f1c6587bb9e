"""Train a diffusion model: `python train.py [overrides]` (see configs/train.yaml and the README)."""

from diffusionlab.utils.allocator import tune_cpu_allocator

tune_cpu_allocator()  # before torch is imported (it reads THP_MEM_ALLOC_ENABLE once)

import hydra
from omegaconf import DictConfig

from diffusionlab.cli.errors import exit_on_user_error
from diffusionlab.cli.resolvers import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    from diffusionlab.cli.train import train

    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    main()
