from .attention import Attention, MemEffAttention
from .block import Block, NestedTensorBlock
from .dino_head import DINOHead
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .pos_embed import resize_pos_embed
from .swiglu_ffn import SwiGLUFFN, SwiGLUFFNFused

__all__ = [
    "Attention",
    "Block",
    "DINOHead",
    "DropPath",
    "LayerScale",
    "MemEffAttention",
    "Mlp",
    "NestedTensorBlock",
    "PatchEmbed",
    "SwiGLUFFN",
    "SwiGLUFFNFused",
    "resize_pos_embed",
]
