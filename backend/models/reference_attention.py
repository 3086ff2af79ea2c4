"""Reference attention through diffusers attention processors (no copy of diffusers internals).

The ReferenceNet *writes* the input of each of its self-attention layers into a
:class:`ReferenceBank`; the denoiser's matching self-attention *reads* it and appends those
reference tokens to its keys and values. The bank is filled once per job and read by every
denoising step and every frame. A per-item ``keep`` mask drops the reference for the
classifier-free-guidance unconditional branch inside one batched forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceBank:
    """Reference tokens per layer name, plus which reference each denoiser item uses."""

    def __init__(self) -> None:
        self.tokens: dict[str, Tensor] = {}
        self.index: Tensor | None = None   # [B] reference row of each denoiser item
        self.keep: Tensor | None = None    # [B] bool, False = attend to itself only; None = all attend
        self.writing = False

    def clear(self) -> None:
        self.tokens.clear()
        self.index = self.keep = None

    def route(self, index: Tensor, keep: Tensor) -> None:
        self.index, self.keep = index, keep


class ReferenceAttnProcessor:
    """Self-attention that writes (ReferenceNet) or reads (denoiser) reference tokens."""

    def __init__(self, bank: ReferenceBank, name: str, role: str) -> None:
        if role not in ("write", "read"):
            raise ValueError(f"role must be 'write' or 'read', not {role!r}")
        self.bank, self.name, self.role = bank, name, role

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs) -> Tensor:
        if self.role == "write":
            if self.bank.writing:
                self.bank.tokens[self.name] = hidden_states
            context, mask = hidden_states, None
        else:
            context, mask = self._with_reference(hidden_states)
        batch, length, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: Tensor) -> Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, length, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def _with_reference(self, hidden_states: Tensor) -> tuple[Tensor, Tensor | None]:
        reference = self.bank.tokens.get(self.name)
        if reference is None:
            return hidden_states, None
        index = self.bank.index if self.bank.index is not None else torch.zeros(
            hidden_states.shape[0], dtype=torch.long, device=hidden_states.device)
        context = torch.cat([hidden_states, reference[index].to(hidden_states.dtype)], dim=1)
        if self.bank.keep is None:
            return context, None
        own = torch.ones(hidden_states.shape[1], dtype=torch.bool, device=hidden_states.device)
        mask = torch.cat([own.expand(hidden_states.shape[0], -1),
                          self.bank.keep[:, None].expand(-1, reference.shape[1])], dim=1)
        return context, mask[:, None, None, :]


def install_reference_attention(reference_unet: nn.Module, denoiser: nn.Module, bank: ReferenceBank) -> int:
    """Give every ``attn1`` (self-attention) of both U-Nets a reference processor; returns the
    number of linked layers. The U-Nets share an architecture, so layer names match."""
    def self_attention_names(unet: nn.Module) -> list[str]:
        return [name for name in unet.attn_processors if ".attn1." in name]

    names = self_attention_names(denoiser)
    if names != self_attention_names(reference_unet):
        raise ValueError("ReferenceNet and denoiser must have the same architecture")
    for unet, role in ((reference_unet, "write"), (denoiser, "read")):
        processors = dict(unet.attn_processors)
        for name in names:
            processors[name] = ReferenceAttnProcessor(bank, name, role)
        unet.set_attn_processor(processors)
    return len(names)
