"""Speed of a static schedule, eager and compiled: the embedded DiT on the CPU, real architectures on a GPU.

A router decides every (step, block, branch) before sampling, so its speed does not depend on trained
weights: DiT-XL/2 (256), PixArt-Sigma (1024) and Flux.1-dev (1024) are built from their published
configs with random weights (no hub needed; text encoders are replaced by random prompt embeddings of
the real shapes, VAEs by small random decoders of the real latent shape). For each architecture,
batch size and compile mode the script times, interleaved in one process after warm-up:

* ``stock``: the pipeline without harmonica;
* ``fora``: FORA's schedule (every branch computed every 2nd step, reused in between);
* ``router``: a learned-like schedule at 50% cache usage (random logits, thresholded at that rank);
* ``router+taylor``: the same schedule rebuilding with first-order (TaylorSeer) forecasts, K = 2;
* ``all-compute``: a router that computes everything (batch 1 only): the hooks' own overhead.

It reports median latency, the cache memory of a call (its pools), each variant's speedup over stock
as the median of per-round ratios with their min-max, the transformer MACs speedup
(``harmonica.stats``) and measured / MACs. Compile modes: ``none`` (eager), ``regional`` (every
block compiled) and ``whole`` (``transformer.compile()``).

    python eval/scale.py --arch shapes-dit --batch 8 --compile none regional --threads 2   # CPU
    python eval/scale.py --arch dit-xl-2 pixart-sigma-1024 flux-dev --batch 1 8 --dtype bf16 --compile none regional  # GPU
    python eval/scale.py --tiny                                      # the same code on tiny configs
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harmonica  # noqa: E402
from harmonica import HarmoniCaRouter  # noqa: E402
from harmonica_bench.benchmark import time_interleaved_all  # noqa: E402
from harmonica.cli import HelpFormatter  # noqa: E402
from harmonica.training.objectives import threshold_for_usage  # noqa: E402

ARCHS = ("shapes-dit", "dit-xl-2", "pixart-sigma-1024", "flux-dev")


# ---------------------------------------------------------------------------------- models
def random_vae(latent_channels: int, tiny: bool):
    from diffusers import AutoencoderKL

    levels = 2 if tiny else 4  # 4 levels: 8x downsampling, as the real VAEs
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=(32,) * levels,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=32)


def build(arch: str, tiny: bool):
    """(pipeline, call(batch) -> kwargs, steps) with random weights in the published shapes."""
    from diffusers import (DDIMScheduler, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler,
                           FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                           PixArtSigmaPipeline, PixArtTransformer2DModel)

    torch.manual_seed(0)
    if arch == "shapes-dit":
        from harmonica_bench.embedded import DEFAULT_GUIDANCE, DEFAULT_STEPS, EMBEDDED_PIPELINE

        pipe = DiTPipeline.from_pretrained(EMBEDDED_PIPELINE)
        return pipe, lambda b: dict(class_labels=[i % 10 for i in range(b)], guidance_scale=DEFAULT_GUIDANCE), \
            DEFAULT_STEPS
    if arch == "dit-xl-2":
        heads, layers, size = (2, 4, 8) if tiny else (16, 28, 32)
        transformer = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=72 if not tiny else 8,
                                            in_channels=4, out_channels=8, num_layers=layers, sample_size=size,
                                            patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")
        pipe = DiTPipeline(transformer=transformer, vae=random_vae(4, tiny), scheduler=DDIMScheduler())
        return pipe, lambda b: dict(class_labels=[i % 1000 for i in range(b)], guidance_scale=1.5), 20
    if arch == "pixart-sigma-1024":
        heads, layers, size, caption = (2, 4, 8, 32) if tiny else (16, 28, 128, 4096)
        transformer = PixArtTransformer2DModel(sample_size=size, num_layers=layers, attention_head_dim=72 if not tiny
                                               else 8, num_attention_heads=heads, in_channels=4, out_channels=8,
                                               caption_channels=caption, cross_attention_dim=heads * (8 if tiny else 72),
                                               norm_type="ada_norm_single", interpolation_scale=2 if not tiny else 1,
                                               use_additional_conditions=False)
        pipe = PixArtSigmaPipeline(tokenizer=None, text_encoder=None, transformer=transformer,
                                   vae=random_vae(4, tiny), scheduler=DPMSolverMultistepScheduler())
        tokens, side = (8, 16 * 2) if tiny else (300, 1024)

        def call(b):
            embeds = torch.randn(b, tokens, caption, generator=torch.Generator().manual_seed(1))
            mask = torch.ones(b, tokens, dtype=torch.long)
            return dict(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt=None,
                        negative_prompt_embeds=torch.zeros_like(embeds), negative_prompt_attention_mask=mask,
                        guidance_scale=4.5, height=side, width=side, use_resolution_binning=False)

        return pipe, call, 20
    if arch == "flux-dev":
        if tiny:
            transformer = FluxTransformer2DModel(in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=16,
                                                 num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                                                 guidance_embeds=True, axes_dims_rope=(4, 6, 6))
        else:
            transformer = FluxTransformer2DModel(guidance_embeds=True)  # the published Flux.1-dev config
        config = transformer.config
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=random_vae(16, tiny),
                            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                            transformer=transformer)
        tokens, side = (8, 32) if tiny else (512, 1024)

        def call(b):
            g = torch.Generator().manual_seed(1)
            return dict(prompt_embeds=torch.randn(b, tokens, config.joint_attention_dim, generator=g),
                        pooled_prompt_embeds=torch.randn(b, config.pooled_projection_dim, generator=g),
                        guidance_scale=3.5, height=side, width=side)

        return pipe, call, 28
    raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")


def compile_transformer(pipe, mode: str) -> None:
    if mode == "whole":
        pipe.transformer.compile()
    elif mode == "regional":
        for block in harmonica.families.blocks_of(pipe):
            block.module.compile()
    elif mode != "none":
        raise ValueError(f"compile mode must be none, regional or whole, got {mode!r}")


# ------------------------------------------------------------------------------- measuring
def measure(arch: str, batch: int, mode: str, args) -> dict:
    from harmonica_bench.methods import clone_pipeline

    base, call, steps = build(arch, args.tiny)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    base = base.to(args.device, dtype if arch != "shapes-dit" else torch.float32)
    base.set_progress_bar_config(disable=True)
    layout = harmonica.describe(base)
    router = HarmoniCaRouter.for_layout(layout, steps, generator=torch.Generator().manual_seed(2), history=2)
    router.threshold = threshold_for_usage(router, 0.5)[0]
    forecast = copy.deepcopy(router).init_forecast("taylor:1")  # same schedule, first-order forecasts (K = 2)
    schedules = {"stock": None, "fora": HarmoniCaRouter.static(layout, steps, compute_every=2),
                 "router": router.init_forecast("reuse"), "router+taylor": forecast}
    if batch == 1:
        schedules["all-compute"] = HarmoniCaRouter.for_layout(layout, steps, init="compute")
    pipes = {}
    for name, schedule in schedules.items():
        pipe = clone_pipeline(base)
        if schedule is not None:
            harmonica.enable(pipe, schedule)
        compile_transformer(pipe, mode)
        pipes[name] = pipe
    kwargs = call(batch)
    for key in ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds"):
        if key in kwargs:
            kwargs[key] = kwargs[key].to(args.device, dtype)

    def run(pipe):
        return lambda: pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                            output_type="latent" if arch in ("pixart-sigma-1024", "flux-dev") else "pt")

    times = time_interleaved_all({k: run(v) for k, v in pipes.items()}, repeats=args.repeats, warmup=args.warmup,
                                 device=args.device, progress=True)
    row = {"arch": arch, "batch": batch, "compile": mode, "steps": steps, "dtype": args.dtype, "device": args.device,
           "variants": {}}
    for name, pipe in pipes.items():
        ratios = [s / t for s, t in zip(times["stock"], times[name])]
        stats = None if name == "stock" else harmonica.stats(pipe)
        macs = 1.0 if stats is None else stats.macs_speedup
        speedup = statistics.median(ratios)
        row["variants"][name] = {"latency_s": statistics.median(times[name]), "speedup": speedup,
                                 "speedup_min": min(ratios), "speedup_max": max(ratios),
                                 "cache_usage": 0.0 if stats is None else stats.cache_usage,
                                 "cache_mib": 0.0 if stats is None else stats.cache_bytes / 2**20,
                                 "macs_speedup": macs, "measured_over_macs": speedup / macs}
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| arch | batch | compile | variant | latency | speedup (min-max) | cache usage | cache memory | "
             "MACs speedup | measured / MACs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for name, v in row["variants"].items():
            flag = " (!> MACs)" if v["speedup"] > v["macs_speedup"] * 1.02 else ""
            lines.append(f"| {row['arch']} | {row['batch']} | {row['compile']} | {name} | {v['latency_s']:.3f} s | "
                         f"{v['speedup']:.3f}x ({v['speedup_min']:.3f}-{v['speedup_max']:.3f}){flag} | "
                         f"{v['cache_usage']:.0%} | {v['cache_mib']:.1f} MiB | {v['macs_speedup']:.2f}x | {v['measured_over_macs']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=HelpFormatter)
    p.add_argument("--arch", nargs="+", default=["shapes-dit"], choices=ARCHS)
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--compile", nargs="+", default=["none", "regional"], choices=["none", "regional", "whole"])
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"], help="real architectures' dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (compilation happens there)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--tiny", action="store_true", help="tiny configs of the same architectures (a smoke test)")
    p.add_argument("--out", default="outputs/scale")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # a learned schedule may have a pattern per step
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    rows = []
    for arch in args.arch:
        for batch in args.batch:
            for mode in args.compile:
                rows.append(measure(arch, batch, mode, args))
                torch._dynamo.reset()
                print(markdown(rows[-1:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    (out / "scale.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    (out / "scale.md").write_text(f"device: {device}\n\n" + markdown(rows))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.md'} ({device})")
    return rows


if __name__ == "__main__":
    main()
