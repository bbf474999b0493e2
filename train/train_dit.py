"""Train the embedded model's DiT on VAE latents of the shapes data.

    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        train/train_dit.py --vae runs/vae/vae --judge runs/judge/judge --output runs/dit

v-prediction on a cosine noise schedule with Min-SNR loss weighting, AdamW with a
warm-up / stable / decay learning rate (constant after warm-up, cosine to 0 over the last
--decay_steps; `--decay_steps 0` gives plain warm-up + cosine decay over the whole run), an EMA of
the weights, 10% label dropout to the null class 1000 (for classifier-free
guidance). Every --eval_every steps the EMA model samples a few images per class (20 DDIM steps,
CFG 1.5) and the judge reports their class accuracy, with a PNG grid in --output. Resumes from the
newest checkpoint in --output; the final EMA pipeline goes to <output>/pipeline.
"""

import argparse
import copy

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel
from tqdm.auto import tqdm

from harmonica.cli import HelpFormatter
from harmonica_bench.data import NUM_CLASSES, TRAIN_SEED, render_shapes, to_model_range
from harmonica_bench.embedded import NULL_CLASS, dit_config, save_pipeline, scheduler_config
from harmonica.training.checkpoints import batch_indices, prepare_model_training, save_checkpoint


@torch.no_grad()
def encode_dataset(vae, images, batch_size=512):
    means, stds = [], []
    for b in images.split(batch_size):
        dist = vae.encode(b).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def evaluate(transformer, vae, judge_path, out_png, per_class=20, seed=0):
    """Class accuracy of freshly sampled images (20 DDIM steps, CFG 1.5) and a sample grid."""
    from diffusers import DDIMScheduler, DiTPipeline

    from harmonica_bench.judge import ShapesJudge
    from harmonica_bench.viz import save_image_grid

    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(**scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    images = pipe(labels, guidance_scale=1.5, num_inference_steps=20, output_type="pt",
                  generator=torch.Generator().manual_seed(seed)).images
    save_image_grid(images.reshape(NUM_CLASSES, per_class, *images.shape[1:])[:, :10], out_png)
    if judge_path is None:
        return float("nan")
    judge = ShapesJudge.from_pretrained(judge_path).eval()
    return (judge.predict(images * 2 - 1) == torch.tensor(labels)).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--vae", default="runs/vae/vae")
    p.add_argument("--judge", default="runs/judge/judge", help="judge for periodic accuracy ('' to skip)")
    p.add_argument("--output", default="runs/dit")
    p.add_argument("--num_images", type=int, default=30_000)
    p.add_argument("--steps", type=int, default=6_000)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--decay_steps", type=int, default=None,
                   help="final cosine decay to 0 after a constant lr (default: 20%% of --steps; 0: cosine over the run)")
    p.add_argument("--ema_decay", type=float, default=0.999)
    p.add_argument("--snr_gamma", type=float, default=5.0)
    p.add_argument("--label_dropout", type=float, default=0.1)
    p.add_argument("--eval_every", type=int, default=1_000)
    p.add_argument("--checkpoint_every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    accelerator = Accelerator()
    set_seed(args.seed + accelerator.process_index)
    vae = AutoencoderKL.from_pretrained(args.vae).eval().requires_grad_(False)
    scale = vae.config.scaling_factor
    images, labels = render_shapes(range(args.num_images), TRAIN_SEED)
    lat_mean, lat_std = encode_dataset(vae, to_model_range(images))
    labels = torch.from_numpy(labels)

    noise_sched = DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k != "timestep_spacing"})
    alphas_cumprod = noise_sched.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weight = torch.clamp(snr, max=args.snr_gamma) / (snr + 1)  # Min-SNR for v-prediction

    model = DiTTransformer2DModel(**dit_config())
    model.train()
    model, opt, lr_sched, ema, start = prepare_model_training(accelerator, model, args, args.output)

    g = torch.Generator()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="dit",
               disable=not accelerator.is_main_process)
    for step in bar:
        idx = batch_indices(len(labels), args.batch_size, args.seed + accelerator.process_index, step)
        g.manual_seed((args.seed + 1) * 1_000_003 + step * 64 + accelerator.process_index)
        x0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scale
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=g) < args.label_dropout] = NULL_CLASS
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(y),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = noise_sched.add_noise(x0, noise, t)
        target = noise_sched.get_velocity(x0, noise, t)
        pred = model(x_t.to(accelerator.device), timestep=t.to(accelerator.device),
                     class_labels=y.to(accelerator.device)).sample
        per_sample = ((pred.float() - target.to(pred.device)) ** 2).mean(dim=(1, 2, 3))
        loss = (weight[t].to(pred.device) * per_sample).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(accelerator.unwrap_model(model).parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_sched.get_last_lr()[0]:.1e}")

        done = step + 1
        if done % args.checkpoint_every == 0 or done == args.steps:
            save_checkpoint(accelerator, args.output, done)
        if accelerator.is_main_process and (done % args.eval_every == 0 or done == args.steps):
            ema_model = copy.deepcopy(accelerator.unwrap_model(model))
            ema.copy_to(ema_model.parameters())
            acc = evaluate(ema_model.eval(), vae, args.judge or None, f"{args.output}/samples-{done}.png")
            tqdm.write(f"step {done}: EMA class accuracy {acc:.1%} (200 samples, 20 DDIM steps, CFG 1.5)")

    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        ema.copy_to(final.parameters())
        save_pipeline(f"{args.output}/pipeline", final.eval(), vae)
        print(f"saved {args.output}/pipeline")


if __name__ == "__main__":
    main()
