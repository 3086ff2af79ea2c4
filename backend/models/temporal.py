"""Temporal layers: AnimateDiff-style motion modules in every block of the denoiser.

The modules are diffusers' own ``MotionAdapter`` (so AnimateDiff adapters load into them
unchanged) and are attached to the plain ``UNet2DConditionModel`` with forward hooks, in the
places ``UNetMotionModel`` puts them: after each (resnet, attention) pair of every down and up
block, and after the mid block's attention. Fresh modules get a zero output projection, so
adding them leaves a stage-1 model's predictions exactly as they were.
"""

from __future__ import annotations

from typing import Callable

from diffusers import MotionAdapter
from torch import nn


def build_motion_adapter(channels: tuple[int, ...], layers_per_block: int, heads: int, norm_groups: int,
                         max_frames: int) -> MotionAdapter:
    """A fresh adapter whose modules start as the identity (zero output projection)."""
    adapter = MotionAdapter(block_out_channels=tuple(channels), motion_layers_per_block=layers_per_block,
                            motion_mid_block_layers_per_block=1, motion_num_attention_heads=heads,
                            motion_norm_num_groups=norm_groups, motion_max_seq_length=max_frames,
                            use_motion_mid_block=True)
    for module in adapter.modules():
        projection = getattr(module, "proj_out", None)
        if isinstance(projection, nn.Linear):
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)
    return adapter


def load_motion_adapter(source: str) -> MotionAdapter:
    """An AnimateDiff motion adapter from a hub id (local cache) or a folder (``save_pretrained``)."""
    return MotionAdapter.from_pretrained(source)


def _output_hook(module: nn.Module, frames: Callable[[], int]) -> Callable:
    def hook(_: nn.Module, __: tuple, output):
        if isinstance(output, tuple):
            return (module(output[0], num_frames=frames()),) + tuple(output[1:])
        if hasattr(output, "sample"):
            output.sample = module(output.sample, num_frames=frames())
            return output
        return module(output, num_frames=frames())
    return hook


def attach_motion_modules(denoiser: nn.Module, adapter: MotionAdapter, frames: Callable[[], int]) -> list:
    """Hook the adapter's modules into ``denoiser``; ``frames()`` gives the current frame count.
    Returns the hook handles (remove them to detach)."""
    handles = []
    for blocks, motion_blocks in ((denoiser.down_blocks, adapter.down_blocks), (denoiser.up_blocks, adapter.up_blocks)):
        if len(blocks) != len(motion_blocks):
            raise ValueError("the motion adapter's block layout does not match the denoiser's")
        for block, motion_block in zip(blocks, motion_blocks):
            anchors = getattr(block, "attentions", None) or block.resnets
            if len(anchors) != len(motion_block.motion_modules):
                raise ValueError("the motion adapter has another number of layers per block than the denoiser")
            for anchor, module in zip(anchors, motion_block.motion_modules):
                handles.append(anchor.register_forward_hook(_output_hook(module, frames)))
    mid_module = adapter.mid_block.motion_modules[0]
    handles.append(denoiser.mid_block.attentions[0].register_forward_hook(_output_hook(mid_module, frames)))
    return handles

