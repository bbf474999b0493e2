"""Train a small LoRA on the embedded Flux model (pipelines/shapes-flux), for the LoRA transfer study
(docs/lora.md): does a router trained on the base model still serve the LoRA'd one?

    python train/train_lora.py --output runs/lora-swapped        # about 10 min on the 2-core CPU

The style: "swapped" (harmonica_bench.data.STYLES) paints each shape in its caption's background colour and
the background in its shape colour; the captions are the model's own, so the LoRA has to change what every
prompt draws. Flow matching as train/train_flux.py trains the base model (the same sigmas, 10% empty
prompts for true CFG), peft LoRA adapters (rank --rank) on the attention and MLP projections that diffusers'
Flux LoRAs target; everything else frozen.

Writes to --output: lora/ (pytorch_lora_weights.safetensors: FluxPipeline.load_lora_weights reads it),
pipeline/ (the base pipeline with that LoRA loaded through load_lora_weights and fused: a plain FluxPipeline
folder, what eval/pareto.py and router training take), samples.png (held-out captions: the base model's row,
then the LoRA's, per class), summary.json (colour and class accuracy of both, in both styles) and
training_log.jsonl, and reference.npz (5,000 held-out images in the style, eval/pareto.py's --reference for
FD). A finished --output is refused rather than overwritten.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from tqdm.auto import tqdm

from harmonica.cli import HelpFormatter
from harmonica_bench.data import HELDOUT_SEED, STYLES, TRAIN_SEED, render_captioned_shapes, to_model_range
from harmonica_bench.embedded import (FLUX_MAX_SEQUENCE_LENGTH, FLUX_NEGATIVE_PROMPT, evaluate_flux,
                                      flow_matching_sigmas, pack_flux_latents)

REPO = Path(__file__).resolve().parent.parent
# diffusers' Flux LoRA targets: attention projections of both streams, the MLP outputs, the single blocks' MLP
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.2",
           "ff_context.net.2", "proj_mlp", "proj_out"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pipeline", default=str(REPO / "pipelines" / "shapes-flux"))
    p.add_argument("--judge", default=str(REPO / "pipelines" / "shapes-dit" / "judge"))
    p.add_argument("--style", default="swapped", choices=[s for s in STYLES if s != "plain"])
    p.add_argument("--output", default="runs/lora-swapped")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--num_images", type=int, default=4000)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW, cosine decay to 0 after 50 warm-up steps")
    p.add_argument("--caption_dropout", type=float, default=0.1)
    p.add_argument("--eval_per_class", type=int, default=20)
    p.add_argument("--log_every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@torch.no_grad()
def encode(pipe, args):
    """Normalised latent posteriors (mean, std) of the styled images, and one text embedding per distinct
    caption (index 0: the empty prompt)."""
    images, _, _, captions = render_captioned_shapes(range(args.num_images), TRAIN_SEED, args.style)
    dists = [pipe.vae.encode(b).latent_dist for b in to_model_range(images).split(500)]
    shift, scale = pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor
    mean = (torch.cat([d.mean for d in dists]) - shift) * scale
    std = torch.cat([d.std for d in dists]) * scale
    distinct = [FLUX_NEGATIVE_PROMPT] + sorted(set(captions) - {FLUX_NEGATIVE_PROMPT})
    index = {c: i for i, c in enumerate(distinct)}
    embeds, pooled, _ = pipe.encode_prompt(distinct, None, device=torch.device("cpu"),
                                           max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH)
    return mean, std, torch.tensor([index[c] for c in captions]), embeds, pooled


def report(pipe, judge, args, out_png=None) -> dict:
    pipe.set_progress_bar_config(disable=True)
    return {style: evaluate_flux(pipe, judge, per_class=args.eval_per_class, seed=0, style=style,
                                 out_png=out_png if style == args.style else None)
            for style in ("plain", args.style)}


def main(argv=None):
    args = parse_args(argv)
    output = Path(args.output)
    if (output / "summary.json").exists():
        raise SystemExit(f"{output} holds a finished LoRA run (summary.json); use another --output")
    output.mkdir(parents=True, exist_ok=True)
    from harmonica_bench.judge import ShapesJudge

    judge = ShapesJudge.from_pretrained(args.judge).eval()
    pipe = FluxPipeline.from_pretrained(args.pipeline)
    base_report = report(pipe, judge, args, output / "samples-base.png")
    mean, std, caption_ids, embeds, pooled = encode(pipe, args)

    torch.manual_seed(args.seed)
    model = pipe.transformer
    model.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                 target_modules=TARGETS))
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"LoRA rank {args.rank}: {sum(p.numel() for p in params):,} trainable parameters "
          f"({sum(p.numel() for p in model.parameters()):,} in all)")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * s / args.steps)).item()))
    latent = int(mean.shape[-1])
    img_ids = FluxPipeline._prepare_latent_image_ids(1, latent // 2, latent // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(FLUX_MAX_SEQUENCE_LENGTH, 3)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    losses, t0, start = [], time.time(), time.time()
    with (output / "training_log.jsonl").open("w") as log:
        for step in (bar := tqdm(range(args.steps), desc=f"LoRA ({args.style})")):
            idx = torch.randint(len(mean), (args.batch_size,), generator=g)
            x0 = pack_flux_latents(mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g))
            cap = caption_ids[idx].clone()
            cap[torch.rand(len(cap), generator=g) < args.caption_dropout] = 0
            sigma = flow_matching_sigmas(len(cap), g)
            noise = torch.randn(x0.shape, generator=g)
            s = sigma[:, None, None]
            pred = model(hidden_states=(1 - s) * x0 + s * noise, timestep=sigma, pooled_projections=pooled[cap],
                         encoder_hidden_states=embeds[cap], txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
            loss = ((pred - (noise - x0)) ** 2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if (step + 1) % args.log_every == 0:
                log.write(json.dumps({"step": step + 1, "loss": sum(losses) / len(losses),
                                      "seconds": round(time.time() - t0, 1)}) + "\n")
                log.flush()
                losses, t0 = [], time.time()
    model.eval()
    FluxPipeline.save_lora_weights(output / "lora", transformer_lora_layers=get_peft_model_state_dict(model))
    train_seconds = time.time() - start

    # the user's path: a fresh base pipeline, load_lora_weights, fuse, unload: a plain FluxPipeline folder
    fused = FluxPipeline.from_pretrained(args.pipeline)
    fused.load_lora_weights(output / "lora", adapter_name=args.style)
    fused.fuse_lora(components=["transformer"])
    fused.unload_lora_weights()
    fused.save_pretrained(output / "pipeline")
    shutil.copy(Path(args.pipeline) / "harness.json", output / "pipeline" / "harness.json")
    lora_report = report(fused, judge, args, output / "samples-lora.png")
    np.savez_compressed(output / "reference.npz",
                        images=render_captioned_shapes(range(5000), HELDOUT_SEED, args.style)[0])
    summary = {"style": args.style, "rank": args.rank, "steps": args.steps, "batch_size": args.batch_size,
               "lr": args.lr, "trainable_parameters": sum(p.numel() for p in params),
               "train_seconds": round(train_seconds, 1), "base": base_report, "lora": lora_report}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, r in (("base", base_report), ("LoRA", lora_report)):
        print(f"{name}: " + "; ".join(f"{style} colours {r[style]['colour_accuracy']:.1%}" for style in r)
              + f"; class accuracy {r['plain']['class_accuracy']:.1%}")
    print(f"saved {output / 'lora'} and the fused pipeline {output / 'pipeline'} ({train_seconds:.0f} s of training)")


if __name__ == "__main__":
    main()
