"""Do the frozen random text encoders of the embedded Flux model separate the captions?

    python eval/flux_text_probe.py            # the encoders harmonica_bench.embedded.build_text_encoders() builds
    python eval/flux_text_probe.py --encoders runs/flux/text_encoders

Linear probes (multinomial logistic regression, L-BFGS, trained on 80% of the distinct captions and
scored on the other 20%) read the class, the shape colour and the background colour from the
pooled CLIP vector (FluxPipeline's pooled_projections), and the role (shape or background) of a
colour word from its T5 token (encoder_hidden_states). The transformer is free to do better than
a linear read-out (attention over all text tokens); the probe shows what is there to find.
"""

import argparse
import json

import numpy as np
import torch
from diffusers import FluxPipeline

from harmonica.cli import HelpFormatter
from harmonica_bench.data import COLOUR_NAMES, COLOUR_PAIRS, NUM_CLASSES, SIZE_WORDS, make_caption, parse_caption
from harmonica_bench.embedded import FLUX_MAX_SEQUENCE_LENGTH, build_text_encoders


def probe(x, y, seed=0):
    x, y = torch.as_tensor(np.asarray(x), dtype=torch.float32), torch.as_tensor(np.asarray(y))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = perm[: len(y) * 4 // 5], perm[len(y) * 4 // 5 :]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(int(y.max()) + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ w + b, y[train]) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((x[test] @ w + b).argmax(1) == y[test]).float().mean().item()


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--encoders", default=None, help="a run's text_encoders folder (default: build them)")
    args = p.parse_args()
    if args.encoders:
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

        clip = CLIPTextModel.from_pretrained(f"{args.encoders}/text_encoder")
        tok = CLIPTokenizer.from_pretrained(f"{args.encoders}/tokenizer")
        t5 = T5EncoderModel.from_pretrained(f"{args.encoders}/text_encoder_2")
        tok2 = T5Tokenizer.from_pretrained(f"{args.encoders}/tokenizer_2")
    else:
        clip, tok, t5, tok2 = build_text_encoders()
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                        tokenizer_2=tok2, transformer=None)
    captions = [make_caption(c, f, b, s) for c in range(NUM_CLASSES) for f, b in COLOUR_PAIRS for s in SIZE_WORDS]
    embeds, pooled, _ = pipe.encode_prompt(captions, None, device=torch.device("cpu"),
                                           max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH)
    targets = np.array([parse_caption(c) for c in captions])
    ids = tok2(captions, padding="max_length", max_length=FLUX_MAX_SEQUENCE_LENGTH).input_ids
    tokens, roles = [], []
    for i, (caption, (_, fg, bg)) in enumerate(zip(captions, targets)):
        pieces = tok2.convert_ids_to_tokens(ids[i])
        fg_at = pieces.index("\u2581" + COLOUR_NAMES[fg])
        bg_at = len(pieces) - 1 - pieces[::-1].index("\u2581" + COLOUR_NAMES[bg])
        tokens += [embeds[i, fg_at].numpy(), embeds[i, bg_at].numpy()]
        roles += [0, 1]
    report = {
        "distinct_captions": len(captions),
        "pooled_clip_to_class": probe(pooled, targets[:, 0]),
        "pooled_clip_to_shape_colour": probe(pooled, targets[:, 1]),
        "pooled_clip_to_background_colour": probe(pooled, targets[:, 2]),
        "t5_colour_token_to_role": probe(tokens, roles),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
