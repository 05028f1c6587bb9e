"""Lightning wrappers: the diffusion LightningModule, EMA, callbacks, checkpoint I/O."""

from diffusionlab.diffusion.gaussian import NonFiniteLossError
from diffusionlab.lit.callbacks import ExportEMACallback, SampleGridCallback
from diffusionlab.lit.diffusion_module import DiffusionModule
from diffusionlab.lit.ema import EMA
from diffusionlab.lit.eval_callback import EvalCallback

__all__ = ["DiffusionModule", "EMA", "EvalCallback", "ExportEMACallback", "NonFiniteLossError", "SampleGridCallback"]
