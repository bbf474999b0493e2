"""FID / FD, KID, IS, class accuracy and PSNR / SSIM of a pipeline with a caching method.

Generates N samples (sample i: noise seed SEED+i, class i % C or prompt i % P) with the method and
without caching, split across processes by accelerate, and scores them on the main process:

* FD / KID (and IS) with torch-fidelity against reference images, in Inception-v3's feature space
  when its weights load (--inception_weights PATH, or the download when online), else in the judge's
  (the embedded model's classifier, offline);
* class accuracy by the judge (embedded model);
* PSNR / SSIM against the uncached images of the same seeds;
* cache usage and transformer MACs (theoretical speedup) of one measured batch.

Error bars (--seed_sets K, --bootstrap B): each figure is the mean over K disjoint seed sets with its
std, and a 95% interval from B resamples of the samples (paired: the same resamples for every
method), e.g. "2.282 ±0.041 [2.210, 2.356]". Writes <out>/<method>-<knob>.json (with "errors" and
"metrics_per_set") and appends a row to <out>/results.md.

    python eval/fid.py --method fora=2 --num_samples 1000
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no eval/fid.py --device cpu --method harmonica@runs/router
    # on 8 GPUs:
    accelerate launch --multi_gpu --num_processes 8 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no eval/fid.py --method ... --reference imagenet.npz

Method strings: NAME, NAME=KNOB, NAME=K1,K2 (several points) and NAME[=KNOB]@ROUTER_DIR for the
learned routers (ltc, harmonica; the knob is the threshold). Methods: see --list_methods.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser():
    from harmonica.cli import HelpFormatter
    from harmonica_bench.evaluation import add_error_bar_args, add_pipeline_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_pipeline_args(p)
    add_error_bar_args(p)
    p.add_argument("--method", action="append", default=None,
                   help="method string (repeatable); default: none (the stock pipeline)")
    p.add_argument("--list_methods", action="store_true", help="print the methods and their knobs, then exit")
    p.add_argument("--num_samples", type=int, default=1000)
    g = p.add_argument_group("metrics")
    g.add_argument("--reference", default=None,
                   help="'shapes' (held-out shapes, default for the embedded model), a folder of images or an .npz")
    g.add_argument("--num_reference", type=int, default=5000, help="reference images to use (at most)")
    g.add_argument("--extractor", default="auto", choices=["auto", "inception", "judge"],
                   help="feature space of FD / KID: auto = Inception when its weights load, else the judge")
    g.add_argument("--inception_weights", default=None, help="torch-fidelity Inception-v3 weights (.pth)")
    g.add_argument("--no_download", action="store_true", help="do not try to download Inception weights")
    g.add_argument("--judge", default=None, help="judge folder (default: <pipeline>/judge when present)")
    g.add_argument("--isc", default="auto", choices=["auto", "yes", "no"],
                   help="Inception Score: auto = with the judge, or with Inception when no judge is around "
                        "(Inception's ImageNet classes mean nothing for the shapes data)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--out", default="outputs/eval", help="output folder")
    p.add_argument("--no_keep_samples", action="store_true", help="do not keep generated samples in <out>/samples")
    return p


def list_methods():
    from harmonica_bench import methods

    for name, spec in methods.METHODS.items():
        ok, why = methods.available(name)
        knob = f"{spec.knob} ({spec.kind.__name__})" if spec.knob else "-"
        print(f"{name:12s} knob {knob:32s} {spec.description}{'' if ok else '  [' + why + ']'}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.list_methods:
        list_methods()
        return None
    import torch
    from accelerate import Accelerator

    from harmonica_bench import evaluation as ev

    device = ev.resolve_device(args.device)
    accelerator = Accelerator(cpu=device == "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ev.load_pipeline(args.pipeline, accelerator.device if device != "cpu" else "cpu", args.dtype,
                            args.scheduler)
    setup = ev.setup_from_args(args, pipe)
    log = accelerator.print
    entries = ev.method_entries(args.method or ["none"], pipe, setup, pipeline_path=args.pipeline, log=log)

    judge_path = args.judge or ev.default_judge(args.pipeline)
    reference_name = args.reference or ev.default_reference(args.pipeline)
    extractor = reference = judge = None
    isc = False
    if accelerator.is_main_process:
        if reference_name is None:
            log("no --reference given: FD / KID are skipped (PSNR / SSIM and costs are still measured)")
        else:
            extractor = ev.resolve_extractor(args.extractor, args.inception_weights, judge_path,
                                          try_download=not args.no_download)
            log(f"feature space: {extractor.distance_name} ({extractor.note})")
            reference = ev.reference_images(reference_name, args.num_reference)
        judge = ev.load_judge(judge_path, accelerator.device)
        if args.isc == "yes":
            isc = True
        elif args.isc == "auto" and extractor is not None:
            isc = extractor.kind == "judge" or judge_path is None
    run = ev.QualityRun(pipe, setup, args.num_samples, args.out, accelerator=accelerator, reference=reference,
                        extractor=extractor, judge=judge, isc=isc, pipeline_id=str(args.pipeline),
                        keep_samples=not args.no_keep_samples, seed_sets=args.seed_sets, bootstrap=args.bootstrap,
                        bootstrap_seed=args.bootstrap_seed)
    results = []
    for request, knob in entries:
        result = run.evaluate(request, knob)
        if accelerator.is_main_process:
            result["reference"] = reference_name
            name = ev.safe_name(f"{request.series}-{result['knob']}")
            ev.write_json(Path(args.out) / f"{name}.json", result)
            row = ev.quality_row(result)
            ev.append_markdown(Path(args.out) / "results.md", row)
            log(ev.QUALITY_HEADER + row)
            results.append(result)
    accelerator.wait_for_everyone()
    return results


if __name__ == "__main__":
    main()
