"""Time one training step of candidate sizes of the embedded Flux transformer (to choose its size).

    OMP_NUM_THREADS=1 python eval/flux_train_time.py --steps 20 --size 128,4,4,8 --size 96,3,4,8

Each --size is hidden,heads,double,single. A step is what train/train_flux.py does per batch:
forward and backward on the packed 16 image tokens + --seq text tokens, gradient clipping, AdamW and
an EMA update, on random inputs of the right shapes. Reports the median wall-clock and process-CPU
seconds per step after --warmup steps: on a shared machine the CPU time is the steadier figure
(with one thread it is what the wall clock would be on an idle core).
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.training_utils import EMAModel

from harmonica.cli import HelpFormatter
from harmonica_bench.embedded import flux_transformer_config


def time_size(hidden, heads, double, single, batch, seq, steps, warmup, text_dim=64, grid=4):
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**flux_transformer_config(hidden, heads, double, single, text_dim, text_dim)).train()
    params = sum(p.numel() for p in model.parameters())
    ema = EMAModel(model.parameters(), decay=0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, grid, grid, "cpu", torch.float32)
    txt_ids = torch.zeros(seq, 3)
    walls, cpus = [], []
    for i in range(warmup + steps):
        x = torch.randn(batch, grid * grid, 16)
        w0, c0 = time.perf_counter(), time.process_time()
        pred = model(hidden_states=x, timestep=torch.rand(batch), pooled_projections=torch.randn(batch, text_dim),
                     encoder_hidden_states=torch.randn(batch, seq, text_dim), txt_ids=txt_ids, img_ids=img_ids,
                     return_dict=False)[0]
        loss = ((pred - x) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.step(model.parameters())
        if i >= warmup:
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return {"hidden": hidden, "heads": heads, "double": double, "single": single, "batch": batch, "seq": seq,
            "image_tokens": grid * grid, "params_M": round(params / 1e6, 3), "fp32_MB": round(params * 4 / 2**20, 1),
            "wall_s_per_step": round(statistics.median(walls), 4), "cpu_s_per_step": round(statistics.median(cpus), 4)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--size", action="append", default=None, help="hidden,heads,double,single (repeatable)")
    p.add_argument("--batch", type=int, action="append", default=None)
    p.add_argument("--seq", type=int, default=16, help="text tokens (max_sequence_length)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--grid", type=int, action="append", default=None,
                   help="side of the packed latent grid: 4 = 16 image tokens (f=4 VAE), 8 = 64 (f=2 VAE)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = args.size or ["128,4,4,8"]
    for size in sizes:
        hidden, heads, double, single = (int(v) for v in size.split(","))
        for batch in args.batch or [64]:
            for grid in args.grid or [4]:
                print(json.dumps(time_size(hidden, heads, double, single, batch, args.seq, args.steps, args.warmup,
                                           grid=grid)), flush=True)


if __name__ == "__main__":
    main()
