"""Networks: the 3D ViT encoder, the Gaussian / hierarchical / voxel decoders, presets. Needs torch alone."""
from .encoder_state import EncoderStateMismatch, load_encoder_state
from .gaussian_decoder import GaussianDecoder, GaussianHeads, HierarchicalGaussianDecoder
from .masking import num_visible, patchify, random_masking, token_mask_to_voxels, unpatchify
from .presets import DECODER_TYPES, PRESETS, build_networks, network_config
from .vit import ViT3D, sincos_pos_embed_3d
from .voxel_decoder import VoxelDecoder

__all__ = [
    "ViT3D", "GaussianDecoder", "GaussianHeads", "HierarchicalGaussianDecoder", "VoxelDecoder",
    "random_masking", "num_visible", "token_mask_to_voxels", "patchify", "unpatchify", "sincos_pos_embed_3d",
    "PRESETS", "DECODER_TYPES", "network_config", "build_networks", "load_encoder_state", "EncoderStateMismatch",
]
