"""Train the digits eps-UNet and the digits classifier shipped with the benchmark.

    python benchmarks/train_digits.py                  # writes diffsolve/bench/digits_{unet,classifier}.pt
    python benchmarks/train_digits.py --size 16 --out-dir /tmp/d16   # the 16x16 variant (not shipped)

The class-conditional UNet of ``digits-cond`` (guided sampling, docs/guidance.md) and its weaker
sibling for autoguidance (a third of the channels, about a fifth of the steps):

    python benchmarks/train_digits.py --cond --skip-classifier --steps 7000 --checkpoint-every 1000
    python benchmarks/train_digits.py --cond --skip-classifier --ch 8 --steps 1500 --out-name digits_cond_unet_weak.pt

(``--cond``: a label embedding with a null label, labels replaced by the null label with probability
``--label-dropout`` 0.15; both write into diffsolve/bench/ and evaluate DDIM-50 at CFG 1 and 3.)

Reproducible: fixed seeds, one torch thread, float32 on CPU. Data: scikit-learn's bundled
8x8 digits, the fixed 1,500 / 297 split of :func:`diffsolve.bench.digits.digits_split`
(only the train split is used here). Pixels are mapped to [-1, 1] (and upsampled
bilinearly to 16x16 with ``--size 16``).

UNet loss: DDPM's simple loss E ||eps_theta(x_t, t) - eps||^2 with x_t = A_t x0 + B_t eps
(docs/math.md E8), t uniform in [0, T - 1] as a *fractional* index (sigma log-linear
between levels, as diffsolve's DiscreteSchedule), so every grid may evaluate the model.
The shipped weights are an exponential moving average of the training weights.

Classifier: a small CNN trained with cross-entropy on the train split, with +-1 pixel
shifts as augmentation. Its penultimate features define FDD (see diffsolve/bench/digits.py).

At the end the script samples 500 digits with 50-step DDIM from the EMA model and prints
FDD to the held-out digits, the classifier's mean top-class probability and class shares.
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from diffsolve.analytic import default_schedule
from diffsolve.bench.digits import (
    CLASSIFIER_WEIGHTS,
    COND_UNET_WEIGHTS,
    NULL_LABEL,
    NUM_TRAIN_STEPS,
    UNET_WEIGHTS,
    DigitsClassifier,
    DigitsCondUNet,
    DigitsUNet,
    frechet_distance,
    load_digits_split,
    to_images,
    to_model_space,
)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _save(model, out: Path, meta: dict) -> None:
    blob = {
        "config": dict(model.config),
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)", flush=True)


def train_unet(args) -> DigitsUNet:
    """The eps-UNet; with ``--cond`` the class-conditional one, trained with label dropout: each
    example's label is replaced by the null label with probability ``--label-dropout``, so the same
    network learns the unconditional prediction used by classifier-free guidance (Ho & Salimans 2022)."""
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    images, labels = load_digits_split("train")
    data = to_model_space(images, args.size).float()
    sched = default_schedule()
    if args.cond:
        model = DigitsCondUNet(ch=args.ch, mid=args.mid, size=args.size)
    else:
        model = DigitsUNet(ch=args.ch, mid=args.mid, size=args.size)
    out = args.out_dir / (args.out_name or (COND_UNET_WEIGHTS if args.cond else UNET_WEIGHTS).name)
    meta = {
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "ema": args.ema,
        "seed": args.seed,
        "torch": str(torch.__version__),
    }
    if args.cond:
        meta.update(label_dropout=args.label_dropout, command=f"python benchmarks/train_digits.py {args.command}")
    else:
        meta["command"] = "python benchmarks/train_digits.py"
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    warm = 200
    lr_at = lambda k: args.lr * min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * k / args.steps))  # noqa: E731
    print(
        f"UNet: {sum(p.numel() for p in model.parameters())} parameters, size {args.size}, "
        f"{args.steps} steps of {args.batch}",
        flush=True,
    )
    t0, c0 = time.time(), cpu_seconds()
    avg = None
    for k in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(k)
        idx = torch.randint(0, data.shape[0], (args.batch,), generator=g)
        x0 = data[idx].double()
        t = torch.rand(args.batch, generator=g, dtype=torch.float64) * (NUM_TRAIN_STEPS - 1)
        sigma = sched.sigma(t)
        a = 1 / torch.sqrt(1 + sigma**2)  # A_t (E5)
        b = sigma * a  # B_t
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = (a[:, None, None, None] * x0 + b[:, None, None, None] * eps).float()
        if args.cond:
            y = labels[idx].clone()
            y[torch.rand(args.batch, generator=g) < args.label_dropout] = NULL_LABEL
            pred = model(x_t, t.float(), y)
        else:
            pred = model(x_t, t.float())
        loss = (pred - eps.float()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(args.ema, (1 + k) / (10 + k))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        value = float(loss.detach())
        avg = value if avg is None else 0.99 * avg + 0.01 * value
        if k % 500 == 0 or k == args.steps - 1:
            print(
                f"unet step {k:>6}/{args.steps}  loss(avg) {avg:.4f}  wall {time.time() - t0:.0f}s  "
                f"cpu {cpu_seconds() - c0:.0f}s",
                flush=True,
            )
        if args.checkpoint_every and (k + 1) % args.checkpoint_every == 0 and k + 1 < args.steps:
            _save(ema, out, {**meta, "completed_steps": k + 1, "final_loss_avg": avg})
    _save(ema, out, {**meta, "completed_steps": args.steps, "final_loss_avg": avg})
    return ema.eval()


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image moved by dx, dy in {-1, 0, 1} (zero fill)."""
    n = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            m = (dy == i) & (dx == j)
            out[m] = pad[m, i : i + 8, j : j + 8]
    return out


def train_classifier(args) -> DigitsClassifier:
    torch.manual_seed(args.seed + 1)
    g = torch.Generator().manual_seed(args.seed + 1)
    images, labels = load_digits_split("train")
    images = images.float()
    test_images, test_labels = load_digits_split("test")
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.clf_epochs * (images.shape[0] // 100)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    k = 0
    for _epoch in range(args.clf_epochs):
        perm = torch.randperm(images.shape[0], generator=g)
        for s in range(images.shape[0] // 100):
            idx = perm[s * 100 : (s + 1) * 100]
            x = _shift(images[idx], g)
            x = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            k += 1
    model.eval()
    with torch.no_grad():
        acc = float((model(test_images.float()).argmax(1) == test_labels).double().mean())
        train_acc = float((model(images).argmax(1) == labels).double().mean())
    print(f"classifier: train accuracy {train_acc:.4f}, held-out accuracy {acc:.4f}", flush=True)
    _save(
        model,
        args.out_dir / CLASSIFIER_WEIGHTS.name,
        {
            "epochs": args.clf_epochs,
            "seed": args.seed + 1,
            "train_accuracy": train_acc,
            "test_accuracy": acc,
            "command": "python benchmarks/train_digits.py",
            "torch": str(torch.__version__),
        },
    )
    return model


def evaluate(unet: DigitsUNet, clf: DigitsClassifier, n: int = 500) -> dict:
    import diffsolve as ds

    ode = ds.DiffusionODE(unet, default_schedule(), prediction="eps", time="index")
    size = unet.config["size"]
    x_T = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(1234))
    x0 = ds.sample(ode, x_T, "ddim", steps=50)
    imgs = to_images(x0)
    train_images, _ = load_digits_split("train")
    test_images, _ = load_digits_split("test")
    with torch.no_grad():
        fs = clf.features(imgs.float()).double()
        ft = clf.features(test_images.float()).double()
        fr = clf.features(train_images.float()).double()
        p = clf.head(fs.float()).softmax(1)
        pt = clf(test_images.float()).softmax(1)
    shares = torch.bincount(p.argmax(1), minlength=10).double() / n
    out = {
        "fdd_ddim50_vs_test": frechet_distance(fs, ft),
        "fdd_test_vs_train": frechet_distance(ft, fr),
        "top_prob_samples": float(p.max(1).values.mean()),
        "top_prob_test": float(pt.max(1).values.mean()),
        "class_share_min": float(shares.min()),
        "class_share_max": float(shares.max()),
    }
    print("eval (500 DDIM-50 samples):", {k: round(v, 4) for k, v in out.items()}, flush=True)
    return out


def evaluate_cond(unet: DigitsCondUNet, clf: DigitsClassifier, n_per_class: int = 50) -> dict:
    """Accuracy of the classifier against the requested labels and class-wise FDD (mean over
    classes of FDD to that class's held-out digits) of DDIM-50 samples at CFG scales 1 and 3."""
    import diffsolve as ds

    size = unet.config["size"]
    labels = torch.arange(10).repeat_interleave(n_per_class)
    x_T = torch.randn(labels.numel(), 1, size, size, generator=torch.Generator().manual_seed(1234))
    test_images, test_labels = load_digits_split("test")
    with torch.no_grad():
        ft = clf.features(test_images.float()).double()
    out = {}
    for w in (1.0, 3.0):
        ode = ds.wrap(
            unet,
            default_schedule(),
            time="index",
            cond={"labels": labels},
            uncond={"labels": torch.full_like(labels, NULL_LABEL)},
            guidance=w,
        )
        x0 = ds.sample(ode, x_T, "ddim", steps=50)
        imgs = to_images(x0)
        with torch.no_grad():
            fs = clf.features(imgs.float()).double()
            acc = float((clf.head(fs.float()).argmax(1) == labels).double().mean())
        fdd = [frechet_distance(fs[labels == c], ft[test_labels == c]) for c in range(10)]
        out[f"acc_cfg{w:g}"] = acc
        out[f"classwise_fdd_cfg{w:g}"] = sum(fdd) / 10
    print("eval (DDIM-50, 50 per class):", {k: round(v, 4) for k, v in out.items()}, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8, choices=[8, 16])
    p.add_argument("--ch", type=int, default=24)
    p.add_argument("--mid", type=int, default=1)
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--clf-epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=UNET_WEIGHTS.parent)
    p.add_argument("--skip-classifier", action="store_true", help="reuse the classifier in --out-dir")
    p.add_argument("--cond", action="store_true", help="train the class-conditional UNet (digits-cond)")
    p.add_argument("--label-dropout", type=float, default=0.15, help="share of null labels (--cond)")
    p.add_argument("--out-name", default=None, help="file name of the UNet in --out-dir")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save the EMA weights every this many steps")
    import sys

    a = p.parse_args()
    a.command = " ".join(sys.argv[1:])
    torch.set_num_threads(1)
    t0, c0 = time.time(), cpu_seconds()
    if a.skip_classifier:
        from diffsolve.bench.digits import load_digits_classifier

        clf = load_digits_classifier(a.out_dir / CLASSIFIER_WEIGHTS.name)
    else:
        clf = train_classifier(a)
    print(f"classifier done: wall {time.time() - t0:.0f}s cpu {cpu_seconds() - c0:.0f}s", flush=True)
    unet = train_unet(a)
    if a.cond:
        evaluate_cond(unet, clf)
    else:
        evaluate(unet, clf)
    print(f"total: wall {time.time() - t0:.0f}s  user+sys CPU {cpu_seconds() - c0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
