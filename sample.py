"""Sample from a trained run: `python sample.py ckpt=<run> sampler=ddim steps=50 guidance=2 class=7 n=64`."""

from diffusionlab.utils.allocator import tune_cpu_allocator

tune_cpu_allocator()  # before torch is imported (it reads THP_MEM_ALLOC_ENABLE once)

import sys

import hydra
from omegaconf import DictConfig

from diffusionlab.cli.argv import quote_spec_overrides
from diffusionlab.cli.errors import exit_on_user_error
from diffusionlab.cli.resolvers import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="sample.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from diffusionlab.cli.sample import sample

    sample(cfg)


if __name__ == "__main__":
    sys.argv = quote_spec_overrides(sys.argv)  # extend=left:128,right:128 is one value, not a sweep
    main()
