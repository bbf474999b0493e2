"""Train the text-to-image Flux-style model (pipelines/shapes-flux) on the captioned shapes.

    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train/train_flux.py --output runs/flux
    # 2 CPU processes (gloo); --batch_size is the global batch, split across processes:
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no train/train_flux.py --cpu --output runs/flux

Rectified flow (flow matching) as FlowMatchEulerDiscreteScheduler samples it: x_t = (1 - s) x0 + s e,
the transformer predicts e - x0 at timestep s (FluxPipeline passes t / 1000 = s), training s drawn
logit-normal (SD3) and pushed through the scheduler's shift. The VAE (frozen, the DiT's) encodes
the data once and the frozen random text encoders embed every distinct caption once; both are
cached in --output. 10% of captions are dropped to the empty prompt, FluxPipeline's negative
prompt for true classifier-free guidance. AdamW with a warm-up / stable / decay learning rate, an
EMA of the weights. Every --eval_every steps the EMA model samples held-out captions with the
stock FluxPipeline (true CFG, the shipped step count) and the judges report class and colour
accuracy, with a PNG grid in --output. Resumes from the newest checkpoint in --output; the final
EMA pipeline goes to <output>/pipeline.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from harmonica.cli import HelpFormatter
from harmonica_bench.data import TRAIN_SEED, render_captioned_shapes, to_model_range
from harmonica_bench.embedded import (
    FLUX_MAX_SEQUENCE_LENGTH,
    FLUX_NEGATIVE_PROMPT,
    FLUX_SHIFT,
    FLUX_STEPS,
    FLUX_TEXT_SEED,
    FLUX_TRUE_CFG,
    build_flux_pipeline,
    flow_matching_sigmas,
    build_text_encoders,
    evaluate_flux,
    flux_transformer_config,
    pack_flux_latents,
    save_flux_pipeline,
    with_latent_stats,
)
from harmonica.training.checkpoints import batch_indices, prepare_model_training, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
LATENT = 8  # 32x32 images -> 8x8x4 latents (the VAE downsamples 4x) -> 4x4 = 16 packed tokens


def on_step(done: int) -> None:
    """Called after every optimizer step (tests replace it to interrupt a run)."""


def text_encoders(output: Path, accelerator, width: int):
    """The frozen random text encoders: built once (seed FLUX_TEXT_SEED) and saved in the run folder,
    so a resumed run uses exactly the same ones."""
    folder = output / "text_encoders"
    if accelerator.is_main_process and not (folder / "tokenizer_2").is_dir():
        clip, tok, t5, tok2 = build_text_encoders(FLUX_TEXT_SEED, width)
        tmp = output / ".tmp-text_encoders"
        for name, module in (("text_encoder", clip), ("tokenizer", tok), ("text_encoder_2", t5), ("tokenizer_2", tok2)):
            module.save_pretrained(tmp / name)
        tmp.rename(folder)
    accelerator.wait_for_everyone()
    return (CLIPTextModel.from_pretrained(folder / "text_encoder").eval().requires_grad_(False),
            CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            T5EncoderModel.from_pretrained(folder / "text_encoder_2").eval().requires_grad_(False),
            T5Tokenizer.from_pretrained(folder / "tokenizer_2"))


@torch.no_grad()
def prepare_data(args, vae, clip, tok, t5, tok2, accelerator):
    """Latent posteriors of the training images, the VAE's latent shift/scale, and one text embedding per
    distinct caption (index 0 is the empty prompt). Computed by the main process once, cached in --output."""
    cache = Path(args.output) / "data_cache.pt"
    if accelerator.is_main_process and not cache.exists():
        images, labels, colours, captions = render_captioned_shapes(range(args.num_images), TRAIN_SEED)
        x = to_model_range(images)
        means, stds = [], []
        for b in x.split(500):
            dist = vae.encode(b).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        mean, std = torch.cat(means), torch.cat(stds)
        shift = round(mean.mean().item(), 4)
        scale = round(1.0 / (mean - shift).std().item(), 4)
        distinct = [FLUX_NEGATIVE_PROMPT] + sorted(set(captions) - {FLUX_NEGATIVE_PROMPT})
        index = {c: i for i, c in enumerate(distinct)}
        pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                            tokenizer_2=tok2, transformer=None)
        embeds, pooled = [], []
        for start in range(0, len(distinct), 256):
            e, p, _ = pipe.encode_prompt(distinct[start : start + 256], None, device=torch.device("cpu"),
                                         max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH)
            embeds.append(e)
            pooled.append(p)
        data = dict(lat_mean=mean, lat_std=std, labels=torch.from_numpy(labels), colours=torch.from_numpy(colours),
                    caption_ids=torch.tensor([index[c] for c in captions]), captions=distinct,
                    prompt_embeds=torch.cat(embeds), pooled_embeds=torch.cat(pooled), shift=shift, scale=scale,
                    num_images=args.num_images)
        tmp = cache.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.rename(cache)
    accelerator.wait_for_everyone()
    data = torch.load(cache, weights_only=False)
    if data["num_images"] != args.num_images:
        raise SystemExit(f"{cache} was made for --num_images {data['num_images']}; use another --output")
    return data


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--vae", default=str(REPO / "pipelines" / "shapes-dit" / "vae"))
    p.add_argument("--judge", default=str(REPO / "pipelines" / "shapes-dit" / "judge"),
                   help="class judge for the periodic check ('' to skip class accuracy)")
    p.add_argument("--output", default="runs/flux")
    p.add_argument("--num_images", type=int, default=30_000)
    p.add_argument("--steps", type=int, default=14_000)
    p.add_argument("--batch_size", type=int, default=64, help="global batch, split across processes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--decay_steps", type=int, default=None,
                   help="final cosine decay to 0 after a constant lr (default: 20%% of --steps; 0: cosine over the run)")
    p.add_argument("--ema_decay", type=float, default=0.999)
    p.add_argument("--caption_dropout", type=float, default=0.1)
    p.add_argument("--logit_mean", type=float, default=0.0)
    p.add_argument("--logit_std", type=float, default=1.0)
    p.add_argument("--shift", type=float, default=FLUX_SHIFT, help="timestep shift (training and the scheduler)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--double", type=int, default=4, help="double-stream blocks (transformer_blocks)")
    p.add_argument("--single", type=int, default=8, help="single-stream blocks (single_transformer_blocks)")
    p.add_argument("--text_width", type=int, default=64)
    p.add_argument("--eval_every", type=int, default=2_000, help="0: only at the end")
    p.add_argument("--eval_per_class", type=int, default=20)
    p.add_argument("--eval_steps", type=int, default=FLUX_STEPS)
    p.add_argument("--eval_cfg", type=float, default=FLUX_TRUE_CFG)
    p.add_argument("--checkpoint_every", type=int, default=250)
    p.add_argument("--log_every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="force the CPU (for 2-process gloo runs)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(cpu=args.cpu)
    output = Path(args.output)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        config_file = output / "run_config.json"
        free = ("checkpoint_every", "log_every", "cpu", "judge", "steps")  # may change on resume, with eval_*
        settings = {k: v for k, v in vars(args).items() if not k.startswith("eval_") and k not in free}
        settings["num_processes"] = accelerator.num_processes
        if config_file.exists() and json.loads(config_file.read_text()) != settings:
            raise SystemExit(f"{output} holds a run with other settings ({config_file}); use another --output")
        config_file.write_text(json.dumps(settings, indent=2) + "\n")
    accelerator.wait_for_everyone()
    set_seed(args.seed + accelerator.process_index)
    if args.batch_size % accelerator.num_processes:
        raise SystemExit(f"--batch_size {args.batch_size} is not divisible by {accelerator.num_processes} processes")
    local_batch = args.batch_size // accelerator.num_processes

    vae = AutoencoderKL.from_pretrained(args.vae).eval().requires_grad_(False)
    clip, tok, t5, tok2 = text_encoders(output, accelerator, args.text_width)
    data = prepare_data(args, vae, clip, tok, t5, tok2, accelerator)
    vae = with_latent_stats(vae, data["shift"], data["scale"])
    accelerator.print(f"latent shift {data['shift']}, scale {data['scale']}; {len(data['captions'])} distinct "
                      f"captions (with the empty one) for {args.num_images} images")

    torch.manual_seed(args.seed)  # same initial weights in every process
    model = FluxTransformer2DModel(**flux_transformer_config(args.hidden, args.heads, args.double, args.single,
                                                             args.text_width, args.text_width))
    model.train()
    accelerator.print(f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                      f"{args.double} double + {args.single} single blocks, hidden {args.hidden}")
    model, opt, lr_sched, ema, start = prepare_model_training(accelerator, model, args, output)

    device = accelerator.device
    img_ids = FluxPipeline._prepare_latent_image_ids(1, LATENT // 2, LATENT // 2, device, torch.float32)
    txt_ids = torch.zeros(FLUX_MAX_SEQUENCE_LENGTH, 3, device=device)
    g = torch.Generator()
    log_file = output / "training_log.jsonl"
    losses, t0, c0, t_start = [], time.time(), time.process_time(), time.time()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="flux",
               disable=not accelerator.is_main_process)
    for step in bar:
        idx = batch_indices(len(data["labels"]), local_batch, args.seed + accelerator.process_index, step)
        g.manual_seed((args.seed + 1) * 1_000_003 + step * 64 + accelerator.process_index)
        z = data["lat_mean"][idx] + data["lat_std"][idx] * torch.randn(data["lat_mean"][idx].shape, generator=g)
        x0 = pack_flux_latents((z - data["shift"]) * data["scale"])
        cap = data["caption_ids"][idx].clone()
        cap[torch.rand(len(cap), generator=g) < args.caption_dropout] = 0  # the empty prompt
        sigma = flow_matching_sigmas(len(cap), g, args.logit_mean, args.logit_std, args.shift)
        noise = torch.randn(x0.shape, generator=g)
        s = sigma[:, None, None]
        x_t = (1 - s) * x0 + s * noise
        target = noise - x0
        pred = model(hidden_states=x_t.to(device), timestep=sigma.to(device),
                     pooled_projections=data["pooled_embeds"][cap].to(device),
                     encoder_hidden_states=data["prompt_embeds"][cap].to(device),
                     txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        loss = ((pred.float() - target.to(device)) ** 2).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(accelerator.unwrap_model(model).parameters())
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_sched.get_last_lr()[0]:.1e}")

        done = step + 1
        if accelerator.is_main_process and (done % args.log_every == 0 or done == args.steps):
            with log_file.open("a") as f:
                f.write(json.dumps({"step": done, "loss": sum(losses) / len(losses), "lr": lr_sched.get_last_lr()[0],
                                    "seconds": round(time.time() - t0, 2),
                                    "cpu_seconds": round(time.process_time() - c0, 2)}) + "\n")
            losses, t0, c0 = [], time.time(), time.process_time()
        if done % args.checkpoint_every == 0 or done == args.steps:
            save_checkpoint(accelerator, output, done)
        if accelerator.is_main_process and ((args.eval_every and done % args.eval_every == 0) or done == args.steps):
            report = check(args, accelerator.unwrap_model(model), ema, vae, clip, tok, t5, tok2,
                           output / f"samples-{done}.png")
            report["step"] = done
            with (output / "eval_log.jsonl").open("a") as f:
                f.write(json.dumps(report) + "\n")
            tqdm.write(f"step {done}: EMA " + ", ".join(f"{k} {v:.1%}" for k, v in report.items() if "accuracy" in k)
                       + f" ({report['num_samples']} samples, {args.eval_steps} steps, true CFG {args.eval_cfg})")
        on_step(done)
    if start < args.steps:
        accelerator.print(f"{args.steps - start} steps in {time.time() - t_start:.1f} s "
                          f"({(time.time() - t_start) / (args.steps - start):.3f} s/step with the checks)")

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = copy.deepcopy(accelerator.unwrap_model(model))
        ema.copy_to(final.parameters())
        save_flux_pipeline(output / "pipeline", final.eval(), vae, clip, tok, t5, tok2, shift=args.shift)
        print(f"saved {output / 'pipeline'}")


@torch.no_grad()
def check(args, model, ema, vae, clip, tok, t5, tok2, out_png) -> dict:
    from harmonica_bench.judge import ShapesJudge

    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model.parameters())
    pipe = build_flux_pipeline(ema_model.eval(), vae, clip, tok, t5, tok2, shift=args.shift)
    pipe.set_progress_bar_config(disable=True)
    judge = ShapesJudge.from_pretrained(args.judge).eval() if args.judge else None
    return evaluate_flux(pipe, judge, per_class=args.eval_per_class, seed=0, out_png=out_png,
                         num_inference_steps=args.eval_steps, true_cfg_scale=args.eval_cfg)


if __name__ == "__main__":
    main()
