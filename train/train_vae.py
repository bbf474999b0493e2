"""Train the embedded model's VAE (32x32x3 -> 8x8x4) on the shapes data.

    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train/train_vae.py --output runs/vae

Resumes from the newest checkpoint in --output. Writes the trained VAE (diffusers folder, with its
latent scaling factor measured on the data) to <output>/vae.
"""

import argparse

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from harmonica.cli import HelpFormatter
from harmonica_bench.data import TRAIN_SEED, render_shapes, to_model_range
from harmonica_bench.embedded import vae_config
from harmonica.training.checkpoints import batch_indices, resume, save_checkpoint


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output", default="runs/vae")
    p.add_argument("--num_images", type=int, default=30_000)
    p.add_argument("--steps", type=int, default=1_400)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--checkpoint_every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    accelerator = Accelerator()
    set_seed(args.seed)
    images = to_model_range(render_shapes(range(args.num_images), TRAIN_SEED)[0])

    vae = AutoencoderKL(**vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr)
    vae, opt = accelerator.prepare(vae, opt)
    start = resume(accelerator, args.output)

    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="vae",
               disable=not accelerator.is_main_process)
    for step in bar:
        x = images[batch_indices(len(images), args.batch_size, args.seed + accelerator.process_index, step)]
        x = x.to(accelerator.device)
        posterior = accelerator.unwrap_model(vae).encode(x).latent_dist
        recon = accelerator.unwrap_model(vae).decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + args.kl_weight * posterior.kl().mean()
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
        bar.set_postfix(mse=f"{mse.item():.4f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            save_checkpoint(accelerator, args.output, step + 1)

    if accelerator.is_main_process:
        model = accelerator.unwrap_model(vae).eval()
        with torch.no_grad():
            sample = images[:4096]
            latents = torch.cat([model.encode(b).latent_dist.mean for b in sample.split(512)])
            recon = torch.cat([model.decode(z).sample for z in latents.split(512)])
        std = latents.std().item()
        model.register_to_config(scaling_factor=round(1.0 / std, 4))
        model.save_pretrained(f"{args.output}/vae")
        mse = torch.nn.functional.mse_loss(recon, sample).item()
        print(f"vae: reconstruction MSE {mse:.4f} on 4096 training images, latent std {std:.3f}, "
              f"scaling_factor {1 / std:.4f}")


if __name__ == "__main__":
    main()
