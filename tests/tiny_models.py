"""Tiny network configurations shared by tests (fast on two CPU cores)."""

import torch

from producer.segmentation import DamageSegmenter

#: A DiffGF autoencoder small enough for tests (tiles must be multiples of 8).
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16], "norm_num_groups": 4, "sample_size": 32,
    "mid_block_add_attention": False,
}
#: A mask-conditioned DiffGF UNet to match (9 input channels: latent, mask, masked latent).
TINY_UNET = {
    "sample_size": 16, "in_channels": 9, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
}


def decisive_segmenter(variant: str = "b0") -> DamageSegmenter:
    """A random-init segmenter (seed 0) whose classifier is scaled ×50, so that its classes are
    decided (few near-ties) as a trained model's are; the benchmarks use the same."""
    torch.manual_seed(0)
    model = DamageSegmenter.build(variant)
    with torch.no_grad():
        model.model.decode_head.classifier.weight.mul_(50.0)
    return model.eval()
