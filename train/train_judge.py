"""Train the judge (shapes classifier) used for class accuracy and Frechet distance.

    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        train/train_judge.py --vae runs/vae/vae --output runs/judge

Half of every batch is replaced by the images' VAE reconstructions, and every image is randomly
noised, blurred and made blocky (harmonica_bench.judge.perturb), so the judge is not fooled by the small
artefacts of generated images. Reports accuracy on held-out clean, perturbed and VAE-reconstructed
images and writes the judge to <output>/judge.
"""

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from harmonica.cli import HelpFormatter
from harmonica_bench.data import HELDOUT_SEED, TRAIN_SEED, render_shapes, to_model_range
from harmonica_bench.judge import ShapesJudge, perturb
from harmonica.training.checkpoints import batch_indices, resume, save_checkpoint


@torch.no_grad()
def vae_roundtrip(vae, images, batch_size=512):
    return torch.cat([vae.decode(vae.encode(b).latent_dist.mean).sample.clamp(-1, 1) for b in images.split(batch_size)])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--vae", default="runs/vae/vae")
    p.add_argument("--output", default="runs/judge")
    p.add_argument("--num_images", type=int, default=30_000)
    p.add_argument("--num_heldout", type=int, default=3_000)
    p.add_argument("--steps", type=int, default=2_000)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--checkpoint_every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    accelerator = Accelerator()
    set_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    images, labels = render_shapes(range(args.num_images), TRAIN_SEED)
    images, labels = to_model_range(images), torch.from_numpy(labels)
    recon = vae_roundtrip(vae, images)

    judge = ShapesJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    judge, opt, sched = accelerator.prepare(judge, opt, sched)
    start = resume(accelerator, args.output)

    g = torch.Generator()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="judge",
               disable=not accelerator.is_main_process)
    for step in bar:
        idx = batch_indices(len(images), args.batch_size, args.seed + accelerator.process_index, step)
        g.manual_seed(args.seed * 7919 + step)
        use_recon = (torch.rand(len(idx), 1, 1, 1, generator=g) < 0.5).float()
        x = perturb(torch.lerp(images[idx], recon[idx], use_recon), generator=g)
        loss = torch.nn.functional.cross_entropy(judge(x), labels[idx])
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            save_checkpoint(accelerator, args.output, step + 1)

    if accelerator.is_main_process:
        model = accelerator.unwrap_model(judge).eval()
        held, held_labels = render_shapes(range(args.num_heldout), HELDOUT_SEED)
        held, held_labels = to_model_range(held), torch.from_numpy(held_labels)
        g.manual_seed(12345)
        report = {
            "clean": (model.predict(held) == held_labels).float().mean().item(),
            "perturbed": (model.predict(perturb(held, generator=g)) == held_labels).float().mean().item(),
            "vae_reconstructed": (model.predict(vae_roundtrip(vae, held)) == held_labels).float().mean().item(),
            "num_heldout": args.num_heldout,
        }
        model.save_pretrained(f"{args.output}/judge")
        Path(f"{args.output}/judge/accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
        print("judge accuracy on held-out data: " + ", ".join(
            f"{k} {v:.1%}" for k, v in report.items() if k != "num_heldout"))


if __name__ == "__main__":
    main()
