"""How far the judges of the text-to-image model can be trusted: class judge (pipelines/shapes-dit/judge)
and colour judge (harmonica_bench.judge.colour_report, a rule with no weights) on held-out captioned shapes,
clean and after a VAE round trip. Writes the figures to a JSON file beside the pipeline.

    python train/check_flux_judges.py --out pipelines/shapes-flux/judge_accuracy.json
"""

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from harmonica.cli import HelpFormatter
from harmonica_bench.data import HELDOUT_SEED, MIN_CAPTION_CONTRAST, render_captioned_shapes, to_model_range
from harmonica_bench.judge import ShapesJudge, colour_report

REPO = Path(__file__).resolve().parent.parent


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--vae", default=str(REPO / "pipelines" / "shapes-dit" / "vae"))
    p.add_argument("--judge", default=str(REPO / "pipelines" / "shapes-dit" / "judge"))
    p.add_argument("--num_heldout", type=int, default=3_000)
    p.add_argument("--out", default=str(REPO / "pipelines" / "shapes-flux" / "judge_accuracy.json"))
    args = p.parse_args()

    images, labels, colours, _ = render_captioned_shapes(range(args.num_heldout), HELDOUT_SEED)
    x, labels = to_model_range(images), torch.from_numpy(labels)
    judge = ShapesJudge.from_pretrained(args.judge).eval()
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    recon = torch.cat([vae.decode(vae.encode(b).latent_dist.mean).sample.clamp(-1, 1) for b in x.split(500)])
    report = {
        "data": f"captioned shapes, images 0..{args.num_heldout - 1} of seed {HELDOUT_SEED} (held out)",
        "min_luminance_contrast": MIN_CAPTION_CONTRAST,
        "class_judge": {"clean": (judge.predict(x) == labels).float().mean().item(),
                        "vae_reconstructed": (judge.predict(recon) == labels).float().mean().item()},
        "colour_judge": {"clean": colour_report(images, colours),
                         "vae_reconstructed": colour_report((recon + 1) / 2, colours)},
        "colour_accuracy_means": "both: shape and background colour right; foreground / background: each alone",
        "num_heldout": args.num_heldout,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
