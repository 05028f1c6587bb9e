"""Stable Diffusion 1.5 rebuilt in plain PyTorch: CLIP tokenizer and text encoder, KL autoencoder, UNet,
checkpoint loading (original single files and diffusers folders) and the txt2img / img2img / inpaint / outpaint
pipelines. ``StableDiffusion.from_single_file(path)`` is the usual entry point."""

from diffusionlab.nets.vae import AutoencoderKL, Decoder, DiagonalGaussian, Encoder
from diffusionlab.sd.checkpoint import CheckpointError, load_diffusers, load_single_file
from diffusionlab.sd.clip import CLIPTextEncoder
from diffusionlab.sd.config import (
    AutoencoderConfig,
    ScheduleConfig,
    SDConfig,
    TextEncoderConfig,
    UNetConfig,
    preset,
    sd15,
    tiny,
)
from diffusionlab.sd.pipeline import SDOutput, StableDiffusion
from diffusionlab.sd.tokenizer import CLIPTokenizer
from diffusionlab.sd.unet import UNet

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "CLIPTextEncoder",
    "CLIPTokenizer",
    "CheckpointError",
    "Decoder",
    "DiagonalGaussian",
    "Encoder",
    "SDConfig",
    "SDOutput",
    "ScheduleConfig",
    "StableDiffusion",
    "TextEncoderConfig",
    "UNet",
    "UNetConfig",
    "load_diffusers",
    "load_single_file",
    "preset",
    "sd15",
    "tiny",
]
