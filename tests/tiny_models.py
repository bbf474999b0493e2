"""Tiny diffusers pipelines built locally (no hub) for the tests."""

from __future__ import annotations

import torch


def randomize_zero_init(model) -> None:
    """adaLN-zero initialises every gate (and the output layer) to zero; random values make every
    branch matter, so a wrong cache would show in the images."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
    ).eval()


def tiny_dit_pipeline(num_layers: int = 3, learned_sigma: bool = False):
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8 if learned_sigma else 4,
        num_layers=num_layers,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_num_groups=4,
    ).eval()
    randomize_zero_init(transformer)
    return DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDIMScheduler(clip_sample=False))


def tiny_pixart_pipeline(sigma: bool = False, num_layers: int = 2):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(0)
    words = ["a", "red", "blue", "circle", "square", "on", "the", "green", "star", "big", "small"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0 - i) for i, w in enumerate(words)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    encoder = T5EncoderModel(
        T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    ).eval()
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=num_layers,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        cross_attention_dim=16,
        caption_channels=32,
        norm_num_groups=4,
    ).eval()
    randomize_zero_init(transformer)
    klass = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return klass(
        tokenizer=tokenizer,
        text_encoder=encoder,
        transformer=transformer,
        vae=tiny_vae(),
        scheduler=DPMSolverMultistepScheduler(),
    )


def pixart_call_kwargs(**extra):
    kw = dict(
        prompt=["a red circle", "a blue star on the green"],
        num_inference_steps=4,
        height=16,
        width=16,
        use_resolution_binning=False,
        clean_caption=False,
        output_type="pt",
        max_sequence_length=16,
    )
    kw.update(extra)
    return kw
