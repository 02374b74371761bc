"""The public model as one checkpoint in the original Stable Diffusion key layout (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.*``), the file common UIs and diffusers'
``from_single_file`` load.

The layout follows the original latent-diffusion code: the UNet's blocks become numbered
``input_blocks`` / ``middle_block`` / ``output_blocks`` (an input block per ResNet, plus one per
downsampler; an output block per ResNet, the upsampler inside the last), ResNets rename their layers
(``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``), the VAE's decoder blocks are numbered
from the bottom up and its attention uses 1x1 convolutions, and the text encoder keeps CLIP's own names
under a prefix. Stable Diffusion 1.x is exact; for 2.x the text encoder is written in CLIP's layout too
(diffusers reads it; a UI that expects OpenCLIP's layout for 2.x does not). SDXL is not supported here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .backbone import is_sdxl
from .errors import ConceptVaultError
from .files import atomic_path
from .key import is_key_parameter

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(name: str, table: dict[str, str]) -> str:
    head, _, tail = name.rpartition(".")  # tail: weight / bias
    for old, new in table.items():
        if head == old or head.startswith(old + "."):
            return new + head[len(old) :] + "." + tail
    return name


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    layers = config.layers_per_block
    out: dict[str, torch.Tensor] = {}

    def put(ldm: str, tensor: torch.Tensor) -> None:
        out["model.diffusion_model." + ldm] = tensor

    for name, tensor in state.items():
        parts = name.split(".")
        if parts[0] == "time_embedding":
            put(
                name.replace("time_embedding.linear_1", "time_embed.0").replace(
                    "time_embedding.linear_2", "time_embed.2"
                ),
                tensor,
            )
        elif parts[0] == "conv_in":
            put(name.replace("conv_in", "input_blocks.0.0"), tensor)
        elif parts[0] == "conv_norm_out":
            put(name.replace("conv_norm_out", "out.0"), tensor)
        elif parts[0] == "conv_out":
            put(name.replace("conv_out", "out.2"), tensor)
        elif parts[0] == "down_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                put(f"input_blocks.{1 + i * (layers + 1) + layers}.0.op.{rest.split('.', 1)[1]}", tensor)
            else:
                slot = "0" if kind == "resnets" else "1"
                rest = _rename(rest, _RESNET) if kind == "resnets" else rest
                put(f"input_blocks.{1 + i * (layers + 1) + j}.{slot}.{rest}", tensor)
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            index = 2 * j if kind == "resnets" else 1
            put(f"middle_block.{index}.{_rename(rest, _RESNET) if kind == 'resnets' else rest}", tensor)
        elif parts[0] == "up_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":
                has_attention = config.up_block_types[i].startswith("CrossAttn")
                put(f"output_blocks.{i * (layers + 1) + layers}.{2 if has_attention else 1}.{rest}", tensor)
            else:
                slot = "0" if kind == "resnets" else "1"
                rest = _rename(rest, _RESNET) if kind == "resnets" else rest
                put(f"output_blocks.{i * (layers + 1) + j}.{slot}.{rest}", tensor)
        else:
            raise ConceptVaultError(f"the UNet tensor {name!r} has no place in the original layout.")
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    blocks = len(config.block_out_channels)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        parts = name.split(".")
        ldm = name
        if parts[0] in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
            i, kind, j, rest = int(parts[2]), parts[3], parts[4], ".".join(parts[5:])
            level = i if parts[0] == "encoder" else blocks - 1 - i
            group = "down" if parts[0] == "encoder" else "up"
            if kind == "resnets":
                ldm = f"{parts[0]}.{group}.{level}.block.{j}.{_rename(rest, _VAE_RESNET)}"
            else:  # downsamplers / upsamplers
                ldm = f"{parts[0]}.{group}.{level}.{'downsample' if group == 'down' else 'upsample'}.{rest}"
        elif parts[0] in ("encoder", "decoder") and parts[1] == "mid_block":
            kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                ldm = f"{parts[0]}.mid.block_{j + 1}.{_rename(rest, _VAE_RESNET)}"
            else:
                ldm = f"{parts[0]}.mid.attn_1.{_rename(rest, _VAE_ATTENTION)}"
                if tensor.dim() == 2:  # linear to 1x1 convolution
                    tensor = tensor[:, :, None, None]
        elif parts[0] in ("encoder", "decoder") and parts[1] == "conv_norm_out":
            ldm = name.replace("conv_norm_out", "norm_out")
        out["first_stage_model." + ldm] = tensor
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP's own names under the original prefix (transformers may have flattened ``text_model.`` away)."""
    return {
        "cond_stage_model.transformer." + (name if name.startswith("text_model.") else "text_model." + name): tensor
        for name, tensor in state.items()
    }


def export_single_file(pipe, path: Path | str, *, dtype: torch.dtype = torch.float16) -> None:
    """Write ``pipe``'s UNet, VAE and text encoder as one original-layout safetensors checkpoint."""
    if is_sdxl(pipe.unet):
        raise ConceptVaultError(
            "single-file export covers Stable Diffusion 1.x and 2.x; export SDXL as a diffusers folder."
        )
    unet = {n: t for n, t in pipe.unet.state_dict().items() if not is_key_parameter(n)}
    state = {
        **unet_to_ldm(unet, pipe.unet.config),
        **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **clip_to_ldm(pipe.text_encoder.state_dict()),
    }
    state = {
        name: tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
        for name, tensor in state.items()
    }
    with atomic_path(path, mode=0o644) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt", "written_by": "conceptvault"})
