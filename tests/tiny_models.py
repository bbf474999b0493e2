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


# ----------------------------------------------------------------------- modern text-to-image
WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "green", "star", "big", "small", "background"]


def tiny_clip(hidden: int = 32, projection: int = 32, with_projection: bool = False):
    """A byte-level CLIP tokenizer built in memory and a 2-layer random CLIP text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    names = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={n: i for i, n in enumerate(names)}, merges=[], model_max_length=77)
    config = CLIPTextConfig(vocab_size=len(names), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=projection,
                            bos_token_id=len(names) - 2, eos_token_id=len(names) - 1, pad_token_id=len(names) - 1)
    torch.manual_seed(1)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()
    return tokenizer, model


def tiny_t5(d_model: int = 32, umt5: bool = False):
    """A word-piece T5 tokenizer built in memory and a 2-layer random T5 (or UMT5) encoder."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer, UMT5Config, UMT5EncoderModel

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0 - i) for i, w in enumerate(WORDS)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(2)
    kwargs = dict(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4)
    model = (UMT5EncoderModel(UMT5Config(**kwargs)) if umt5 else T5EncoderModel(T5Config(**kwargs))).eval()
    return tokenizer, model


def tiny_flux_pipeline(guidance_embeds: bool = False, num_layers: int = 2, num_single_layers: int = 2):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, text_encoder = tiny_clip()
    tokenizer_2, text_encoder_2 = tiny_t5()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=num_layers,
                                         num_single_layers=num_single_layers, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                         guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4)).eval()
    randomize_zero_init(transformer)
    vae = tiny_vae()
    vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)


def flux_call_kwargs(true_cfg: bool = True, **extra):
    kw = dict(prompt=["a red circle", "a blue star on the green"], num_inference_steps=4, height=16, width=16,
              max_sequence_length=8, output_type="pt", guidance_scale=3.5)
    if true_cfg:
        kw.update(negative_prompt=["", ""], true_cfg_scale=4.0)
    kw.update(extra)
    return kw
