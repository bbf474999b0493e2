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


def tiny_sd3_pipeline(dual_attention: bool = False, num_layers: int = 2):
    """SD3 (MMDiT; the last block is context_pre_only); ``dual_attention``: SD3.5-like, block 0 has attn2."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, text_encoder = tiny_clip(hidden=16, projection=16, with_projection=True)
    tokenizer_2, text_encoder_2 = tiny_clip(hidden=16, projection=16, with_projection=True)
    tokenizer_3, text_encoder_3 = tiny_t5()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4,
                                        num_layers=num_layers, attention_head_dim=8, num_attention_heads=2,
                                        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
                                        pos_embed_max_size=8, dual_attention_layers=(0,) if dual_attention else (),
                                        qk_norm="rms_norm" if dual_attention else None).eval()
    randomize_zero_init(transformer)
    vae = tiny_vae()
    vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)
    return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
                                    transformer=transformer)


def sd3_call_kwargs(**extra):
    kw = dict(prompt=["a red circle", "a blue star on the green"], num_inference_steps=4, height=16, width=16,
              max_sequence_length=8, output_type="pt", guidance_scale=4.5)
    kw.update(extra)
    return kw


def tiny_gemma(hidden: int = 16):
    """A character-level Gemma tokenizer built in memory and a 2-layer random Gemma2 encoder (Sana)."""
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(3)
    config = Gemma2Config(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
                          pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation="eager")
    return tokenizer, Gemma2Model(config).eval()


def tiny_dc_vae():
    """A 3-level DC-AE (spatial factor 4): Sana wants sides divisible by 32, so 32x32 images are 8x8 latents."""
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    return AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                         encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                         decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                         encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                         encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
                         encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
                         downsample_block_type="conv", upsample_block_type="interpolate",
                         decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407).eval()


def tiny_sana_pipeline(num_layers: int = 2):
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer, text_encoder = tiny_gemma()
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
                                         num_attention_heads=2, attention_head_dim=8, num_cross_attention_heads=2,
                                         cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
                                         sample_size=8).eval()
    randomize_zero_init(transformer)
    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    return SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=tiny_dc_vae(),
                        scheduler=scheduler)


def sana_call_kwargs(**extra):
    kw = dict(prompt=["a red circle", "a blue star on the green"], num_inference_steps=4, height=32, width=32,
              max_sequence_length=16, output_type="pt", guidance_scale=4.5, use_resolution_binning=False,
              complex_human_instruction=None)
    kw.update(extra)
    return kw


def tiny_wan_vae(ti2v: bool = False):
    """A tiny Wan video VAE (spatial factor 8, temporal 4); ``ti2v``: Wan 2.2 TI2V's 48-channel patchified
    VAE (spatial factor 16)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    if ti2v:
        return AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                                latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1],
                                num_res_blocks=1, scale_factor_spatial=16, scale_factor_temporal=4,
                                temperal_downsample=[False, True, True]).eval()
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_wan_transformer(in_channels: int = 16, num_layers: int = 2, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=in_channels, out_channels=in_channels, text_dim=32, freq_dim=32,
                                        ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
                                        qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    randomize_zero_init(transformer)
    return transformer


def tiny_wan_pipeline(two_experts: bool = False, ti2v: bool = False, boundary_ratio: float = 0.5):
    """Wan 2.1 T2V; ``two_experts``: Wan 2.2 A14B-like (``transformer_2`` takes over below ``boundary_ratio``);
    ``ti2v``: Wan 2.2 TI2V-5B-like (per-token timesteps, ``expand_timesteps=True``)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    tokenizer, text_encoder = tiny_t5(umt5=True)
    channels = 48 if ti2v else 16
    extra = {}
    if two_experts:
        extra = dict(transformer_2=tiny_wan_transformer(channels, seed=1), boundary_ratio=boundary_ratio)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny_wan_vae(ti2v),
                       transformer=tiny_wan_transformer(channels), scheduler=scheduler, expand_timesteps=ti2v, **extra)


def wan_call_kwargs(**extra):
    kw = dict(prompt=["a red circle", "a blue star on the green"], num_inference_steps=4, height=32, width=32,
              num_frames=5, max_sequence_length=8, output_type="pt", guidance_scale=5.0)
    kw.update(extra)
    return kw


def tiny_qwen_vl(hidden: int = 16):
    """A byte-level Qwen2 tokenizer built in memory (with the chat-template tokens) and a 2-layer random
    Qwen2.5-VL text encoder (Qwen-Image)."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_tokens([AddedToken(token, special=True) for token in specials[1:]])
    ids = dict(bos_token_id=0, eos_token_id=2, pad_token_id=0)
    text = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=len(vocab), rope_theta=1e6,
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, **ids)
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, hidden_size=hidden, vocab_size=len(vocab),
                              vision_start_token_id=1, vision_end_token_id=2, vision_token_id=0, image_token_id=0,
                              video_token_id=0, **ids)
    torch.manual_seed(4)
    return tokenizer, Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwenimage_pipeline(num_layers: int = 2):
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)

    tokenizer, text_encoder = tiny_qwen_vl()
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers,
                                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(2, 2, 4)).eval()
    randomize_zero_init(transformer)
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4,
                                 latents_std=[1.0] * 4).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02)
    return QwenImagePipeline(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                             tokenizer=tokenizer)


def qwenimage_call_kwargs(true_cfg: bool = True, **extra):
    kw = dict(prompt=["a red circle", "a blue star on the green"], num_inference_steps=4, height=32, width=32,
              max_sequence_length=16, output_type="pt")
    if true_cfg:
        kw.update(negative_prompt=[" ", " "], true_cfg_scale=4.0)
    kw.update(extra)
    return kw


# ----------------------------------------------------------------------------------- video
def tiny_clip_vision(hidden: int = 32, image_size: int = 32):
    """A tiny CLIP image processor (32x32 crops) and a 2-layer random CLIP vision encoder (Wan 2.1 I2V)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=hidden,
                              num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=8)
    torch.manual_seed(5)
    return processor, CLIPVisionModel(config).eval()


def tiny_wan_i2v_pipeline(ti2v: bool = False):
    """Wan 2.1 I2V: a CLIP image embedding attended by every block's attn2 (``add_k_proj`` / ``add_v_proj``), and
    the first frame's latents (with a 4-channel frame mask) concatenated to the noise: 16 + 4 + 16 input channels.
    ``ti2v``: Wan 2.2 TI2V-5B-like (``expand_timesteps``): no image encoder, the first frame's latents written over
    the first latent frame, whose per-token timestep is 0."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    tokenizer, text_encoder = tiny_t5(umt5=True)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    if ti2v:
        return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny_wan_vae(ti2v=True),
                                       transformer=tiny_wan_transformer(48), scheduler=scheduler,
                                       expand_timesteps=True)
    image_processor, image_encoder = tiny_clip_vision()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=36, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32, image_dim=32, added_kv_proj_dim=16).eval()
    randomize_zero_init(transformer)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny_wan_vae(),
                                   transformer=transformer, scheduler=scheduler, image_processor=image_processor,
                                   image_encoder=image_encoder)


def tiny_image(seed: int = 0, size: int = 32):
    """A random RGB image (PIL) to condition image-to-video pipelines on."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def wan_i2v_call_kwargs(**extra):
    """Wan 2.1 I2V splits attn2's context at a hard-coded 512 text tokens: max_sequence_length must be 512."""
    kw = wan_call_kwargs(image=tiny_image(), max_sequence_length=512)
    kw.update(extra)
    return kw


def tiny_llama(hidden: int = 16):
    """A byte-level Llama tokenizer built in memory and a 2-layer random Llama encoder (HunyuanVideo). The
    pipeline's prompt template crops its first 95 tokens (the real tokenizer's template prefix): with this
    tokenizer they are template characters, and the prompt reaches the transformer through CLIP's pooled
    embedding."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaConfig, LlamaModel, LlamaTokenizer

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[], pad_token="<pad>")
    torch.manual_seed(6)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         max_position_embeddings=512)
    return tokenizer, LlamaModel(config).eval()


def tiny_hunyuan_video_pipeline(num_layers: int = 2, num_single_layers: int = 2):
    """HunyuanVideo: dual-stream blocks then single-stream blocks (like Flux), guidance-distilled (guidance
    embedding), a token refiner on the Llama prompt embeddings."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)

    tokenizer, text_encoder = tiny_llama()
    tokenizer_2, text_encoder_2 = tiny_clip(hidden=16, projection=16)
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                                 attention_head_dim=8, num_layers=num_layers,
                                                 num_single_layers=num_single_layers, num_refiner_layers=1,
                                                 patch_size=1, patch_size_t=1, guidance_embeds=True,
                                                 text_embed_dim=16, pooled_projection_dim=16,
                                                 rope_axes_dim=(2, 2, 4)).eval()
    randomize_zero_init(transformer)
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4).eval()
    return HunyuanVideoPipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
                                tokenizer_2=tokenizer_2)


def hunyuan_video_call_kwargs(true_cfg: bool = False, **extra):
    kw = dict(prompt=["a red circle", "a blue star on the green"], num_inference_steps=4, height=16, width=16,
              num_frames=5, max_sequence_length=16, output_type="pt", guidance_scale=6.0)
    if true_cfg:
        kw.update(negative_prompt=["", ""], true_cfg_scale=4.0)
    kw.update(extra)
    return kw


def tiny_ltx_pipeline(num_layers: int = 2):
    """LTX-Video: packed latent tokens, ``LTXVideoTransformerBlock``s (attn1, attn2, ff), CFG batched."""
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)

    tokenizer, text_encoder = tiny_t5()
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                             num_layers=num_layers, caption_channels=32).eval()
    randomize_zero_init(transformer)
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8),
                                spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
                                patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                       tokenizer=tokenizer, transformer=transformer)


def ltx_call_kwargs(**extra):
    kw = dict(prompt=["a red circle", "a blue star on the green"], num_inference_steps=4, height=32, width=32,
              num_frames=9, max_sequence_length=16, output_type="pt", guidance_scale=3.0)
    kw.update(extra)
    return kw


def tiny_cogvideox_pipeline(num_layers: int = 2):
    """CogVideoX: ``CogVideoXBlock``s, joint attention over text + video, one MLP over both; CFG batched."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    tokenizer, text_encoder = tiny_t5()
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                              out_channels=4, time_embed_dim=8, text_embed_dim=32,
                                              num_layers=num_layers, sample_width=2, sample_height=2, sample_frames=9,
                                              patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
                                              use_rotary_positional_embeddings=True).eval()
    randomize_zero_init(transformer)
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                 norm_num_groups=2, temporal_compression_ratio=4).eval()
    scheduler = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       set_alpha_to_one=True, timestep_spacing="trailing")
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=scheduler)


def cogvideox_call_kwargs(**extra):
    kw = dict(prompt=["a red circle", "a blue star on the green"], num_inference_steps=4, height=16, width=16,
              num_frames=9, max_sequence_length=16, output_type="pt", guidance_scale=6.0)
    kw.update(extra)
    return kw
