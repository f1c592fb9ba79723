"""Configuration files shipped with the package and helpers to load them."""

import pathlib

from omegaconf import OmegaConf

# The poolings of the hash head (hash.pooling), here so that the config is checked without torch.
POOLINGS = ("awp", "mean", "grid")

CONFIG_DIR = pathlib.Path(__file__).parent.resolve()


def load_config(config_name: str):
    """Load ``<config_name>.yaml`` from this folder as an OmegaConf object."""
    config_filename = config_name + ".yaml"
    return OmegaConf.load(CONFIG_DIR / config_filename)


dinov2_default_config = load_config("ssl_default_config")


def load_and_merge_config(config_name: str):
    """Default config with the packaged ``<config_name>.yaml`` merged on top."""
    default_config = OmegaConf.create(dinov2_default_config)
    loaded_config = load_config(config_name)
    return OmegaConf.merge(default_config, loaded_config)
