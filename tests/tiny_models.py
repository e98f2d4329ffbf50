"""Tiny randomly initialised diffusers UNets for the interop tests (no download; seed 0, eval mode).

Imported by test modules as ``from tiny_models import tiny_unet`` (tests/ is on sys.path for them);
diffusers is imported inside each builder so a module can still ``pytest.importorskip("diffusers")`` first.
"""

import torch


def tiny_unet(channels: int = 3, dtype: torch.dtype = torch.float32):
    """An 8x8 ``UNet2DModel`` with ``channels`` in and out, two blocks of 4 and 8 channels."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    return unet.to(dtype).eval()


def tiny_cond_unet(dtype: torch.dtype = torch.float64):
    """An 8x8, 4-channel ``UNet2DConditionModel`` with cross-attention on 8-wide text embeddings."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    return unet.to(dtype).eval()
