"""Datasets as LightningDataModules (images in [-1, 1]); raw readers usable without Lightning."""

from diffusionlab.utils.datasets import CLASS_NAMES, DATASET_NAMES, DatasetNotFoundError, load_dataset

__all__ = ["CLASS_NAMES", "DATASET_NAMES", "DatasetNotFoundError", "load_dataset", "ImageDataModule"]


def __getattr__(name):  # keep `import diffusionlab.data` free of Lightning until the module is used
    if name == "ImageDataModule":
        from diffusionlab.data.datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(name)
