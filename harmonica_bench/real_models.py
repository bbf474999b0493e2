"""Real models at their published sizes, without their weights: each transformer from its published config
(the values of the hub's ``transformer/config.json``; ``{}``: the diffusers class's defaults are the
published model's), built on the meta device (no memory, no download), and
the forward inputs of one CFG pass at the resolution people run it at.

A harmonica schedule and its cache depend on shapes, not on trained weights, so memory figures taken here
are the real models' (``eval/memory.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class RealModel:
    """One published transformer and the inputs of one CFG pass (batch 1) at a resolution."""

    name: str
    title: str
    pipeline: str  # the diffusers pipeline class (picks the harmonica family)
    transformer: str  # the diffusers transformer class
    config: dict = field(repr=False)
    inputs: Callable[[dict], dict] = field(repr=False)  # the built config -> forward kwargs of one CFG pass (meta)
    passes: int = 2  # forwards per step with CFG (1: guidance-distilled)

    def build(self, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "meta") -> torch.nn.Module:
        import diffusers

        from harmonica.cache.memory import quiet_diffusers

        with torch.device(device):
            model = getattr(diffusers, self.transformer).from_config(self.config)
        with quiet_diffusers():  # its warning about modules kept in fp32 concerns trained weights
            return model.to(dtype).eval()

    def forward_inputs(self, transformer: torch.nn.Module) -> dict:
        """The inputs of one CFG pass for ``transformer`` (built by ``build``), in its dtype."""
        return {k: v.to(transformer.dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                for k, v in self.inputs(transformer.config).items()}


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _dit_inputs(side_latent):
    return lambda c: dict(hidden_states=_meta(1, c["in_channels"], side_latent, side_latent), timestep=_meta(1),
                          class_labels=torch.zeros(1, dtype=torch.long, device="meta"))


def _pixart_inputs(side_latent, text_tokens):
    return lambda c: dict(hidden_states=_meta(1, c["in_channels"], side_latent, side_latent),
                          encoder_hidden_states=_meta(1, text_tokens, c["caption_channels"]), timestep=_meta(1),
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def _flux_inputs(side_latent, text_tokens):
    def inputs(c):
        n = (side_latent // 2) ** 2  # 2x2 latent patches packed into tokens
        return dict(hidden_states=_meta(1, n, c["in_channels"]), timestep=_meta(1), guidance=_meta(1),
                    pooled_projections=_meta(1, c["pooled_projection_dim"]),
                    encoder_hidden_states=_meta(1, text_tokens, c["joint_attention_dim"]),
                    txt_ids=_meta(text_tokens, 3), img_ids=_meta(n, 3))
    return inputs


def _sd3_inputs(side_latent, text_tokens):
    return lambda c: dict(hidden_states=_meta(1, c["in_channels"], side_latent, side_latent), timestep=_meta(1),
                          encoder_hidden_states=_meta(1, text_tokens, c["joint_attention_dim"]),
                          pooled_projections=_meta(1, c["pooled_projection_dim"]))


def _wan_inputs(frames, height, width, text_tokens=512):
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)  # Wan's VAE: 4x in time, 8x in space
    return lambda c: dict(hidden_states=_meta(1, c["in_channels"], *latent), timestep=_meta(1),
                          encoder_hidden_states=_meta(1, text_tokens, c["text_dim"]))


def _hunyuan_inputs(frames, height, width, text_tokens=256):
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)  # its VAE: 4x in time, 8x in space
    return lambda c: dict(hidden_states=_meta(1, c["in_channels"], *latent), timestep=_meta(1),
                          encoder_hidden_states=_meta(1, text_tokens, c["text_embed_dim"]),
                          encoder_attention_mask=torch.ones(1, text_tokens, dtype=torch.bool, device="meta"),
                          pooled_projections=_meta(1, c["pooled_projection_dim"]), guidance=_meta(1))


def _ltx_inputs(frames, height, width, text_tokens=128):
    latent = ((frames - 1) // 8 + 1, height // 32, width // 32)  # its VAE: 8x in time, 32x in space
    return lambda c: dict(hidden_states=_meta(1, latent[0] * latent[1] * latent[2], c["in_channels"]),
                          encoder_hidden_states=_meta(1, text_tokens, c["caption_channels"]), timestep=_meta(1),
                          encoder_attention_mask=torch.ones(1, text_tokens, dtype=torch.bool, device="meta"),
                          num_frames=latent[0], height=latent[1], width=latent[2])


def _cogvideox_inputs(frames, height, width, text_tokens=226):
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    return lambda c: dict(hidden_states=_meta(1, latent[0], c["in_channels"], *latent[1:]),
                          encoder_hidden_states=_meta(1, text_tokens, c["text_embed_dim"]), timestep=_meta(1))


_WAN = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
            freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)

REAL_MODELS: dict[str, RealModel] = {m.name: m for m in (
    RealModel("dit-xl-2-256", "DiT-XL/2 256", "DiTPipeline", "DiTTransformer2DModel",
              dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                   sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero"),
              _dit_inputs(32)),
    RealModel("pixart-sigma-1024", "PixArt-Σ 1024", "PixArtSigmaPipeline", "PixArtTransformer2DModel",
              dict(sample_size=128, num_layers=28, attention_head_dim=72, num_attention_heads=16, in_channels=4,
                   out_channels=8, caption_channels=4096, cross_attention_dim=1152, norm_type="ada_norm_single",
                   interpolation_scale=2, use_additional_conditions=False),
              _pixart_inputs(128, 300)),
    RealModel("flux-dev-1024", "Flux.1-dev 1024²", "FluxPipeline", "FluxTransformer2DModel",
              dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                   num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                   guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
              _flux_inputs(128, 512), passes=1),
    RealModel("sd35-large-1024", "SD3.5-large 1024²", "StableDiffusion3Pipeline", "SD3Transformer2DModel",
              dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                   num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm"),
              _sd3_inputs(128, 333)),
    RealModel("wan21-1.3b-480p", "Wan 2.1 1.3B 480p, 81 frames", "WanPipeline", "WanTransformer3DModel",
              dict(_WAN, num_attention_heads=12, ffn_dim=8960, num_layers=30), _wan_inputs(81, 480, 832)),
    RealModel("wan21-14b-720p", "Wan 2.1 14B 720p, 81 frames", "WanPipeline", "WanTransformer3DModel",
              dict(_WAN, num_attention_heads=40, ffn_dim=13824, num_layers=40), _wan_inputs(81, 720, 1280)),
    RealModel("hunyuanvideo-720p", "HunyuanVideo 720p, 129 frames", "HunyuanVideoPipeline",
              "HunyuanVideoTransformer3DModel", {}, _hunyuan_inputs(129, 720, 1280), passes=1),
    RealModel("ltx-video-768x512", "LTX-Video 768x512, 121 frames", "LTXPipeline", "LTXVideoTransformer3DModel", {},
              _ltx_inputs(121, 512, 768)),
    RealModel("cogvideox-5b", "CogVideoX-5B 720x480, 49 frames", "CogVideoXPipeline", "CogVideoXTransformer3DModel",
              dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
              _cogvideox_inputs(49, 480, 720)),
)}
