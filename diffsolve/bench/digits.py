"""The shipped image model: scikit-learn's bundled 8x8 handwritten digits.

Data: ``sklearn.datasets.load_digits`` (1,797 images, 8x8, values 0..16; bundled with
scikit-learn, nothing is downloaded), split once with a fixed seed into 1,500 train and
297 held-out images (stratified by label, :func:`digits_split`). Pixels map to the model's
space by ``x = 2 v / 16 - 1`` (so [-1, 1]), at the native 8x8 resolution.

Models, both trained by ``python benchmarks/train_digits.py`` (fixed seed, CPU):

* :class:`DigitsUNet`, a compact UNet that predicts eps from ``(x_t, t)`` with ``t`` the
  fractional DDPM index of the linear schedule (docs/math.md E1); weights ``digits_unet.pt``.
* :class:`DigitsClassifier`, a small CNN on the train split; weights ``digits_classifier.pt``.
  Its penultimate features (64 numbers per image) define **FDD**, the Frechet distance
  between Gaussians fitted to two feature sets (this data set's FID), and its predictions
  give class coverage.

Both files hold only tensors and plain Python values and load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..analytic import default_schedule
from .problems import ModelProblem, sliced_wasserstein

__all__ = [
    "DigitsUNet",
    "DigitsCondUNet",
    "DigitsClassifier",
    "load_digits_split",
    "digits_split",
    "load_digits_unet",
    "load_digits_cond_unet",
    "load_digits_classifier",
    "frechet_distance",
    "DigitsProblem",
    "digits_problem",
    "UNET_WEIGHTS",
    "CLASSIFIER_WEIGHTS",
    "COND_UNET_WEIGHTS",
    "WEAK_COND_UNET_WEIGHTS",
    "NULL_LABEL",
    "SPLIT_SEED",
    "N_TRAIN",
    "N_TEST",
    "NUM_TRAIN_STEPS",
]

UNET_WEIGHTS = Path(__file__).with_name("digits_unet.pt")
CLASSIFIER_WEIGHTS = Path(__file__).with_name("digits_classifier.pt")
COND_UNET_WEIGHTS = Path(__file__).with_name("digits_cond_unet.pt")
WEAK_COND_UNET_WEIGHTS = Path(__file__).with_name("digits_cond_unet_weak.pt")
NULL_LABEL = 10  # the label embedding's "no label" row of the conditional UNet
SPLIT_SEED = 0
N_TRAIN, N_TEST = 1500, 297
NUM_TRAIN_STEPS = 1000  # DDPM's T: the model's time input is the index 0..999
_F64 = torch.float64


# -- data ------------------------------------------------------------------------------------------
def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the digits problem needs scikit-learn (it ships the 8x8 digits): pip install 'diffsolve[digits]'"
        ) from None
    d = load_digits()
    return np.asarray(d.images, dtype=np.float64), np.asarray(d.target, dtype=np.int64)


def digits_split(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: a stratified split of 1,500 / 297 with a fixed seed.

    Per class, a seeded permutation; the held-out count of each class is its share of 297
    (largest remainders), so both splits keep the classes' proportions.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * N_TEST / counts.sum()
    take = np.floor(share).astype(int)
    order = np.argsort(-(share - take), kind="stable")
    take[order[: N_TEST - take.sum()]] += 1
    train, test = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of ``split`` ("train" or "test"): images (N, 8, 8) float64 in [0, 1]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _sklearn_digits()
    train, test = digits_split(labels)
    idx = train if split == "train" else test
    return torch.from_numpy(images[idx] / 16.0), torch.from_numpy(labels[idx])


def to_model_space(images: torch.Tensor, size: int = 8) -> torch.Tensor:
    """(N, 8, 8) in [0, 1] -> (N, 1, size, size) in [-1, 1] (bilinear upsampling when size is 16)."""
    x = (2 * images - 1).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def _model_space_data(cache: dict, split: str, size: int) -> torch.Tensor:
    """The real digits of ``split`` in model space (N, 1, size, size), float64, computed once per ``cache``."""
    if ("data", split) not in cache:
        images, _ = load_digits_split(split)
        cache[("data", split)] = to_model_space(images, size).to(_F64)
    return cache[("data", split)]


def to_images(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) model space -> (N, H, W) in [0, 1] (clamped)."""
    x = x.detach().to(_F64).cpu()
    return ((x.reshape(x.shape[0], x.shape[-2], x.shape[-1]) + 1) / 2).clamp(0, 1)


# -- the eps-model ---------------------------------------------------------------------------------
def _groups(ch: int) -> int:
    return 8 if ch % 8 == 0 else 1


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    """eps-prediction UNet: ``forward(x, t)`` with x (N, 1, H, W) and t the DDPM index (N,).

    Two resolutions (H and H/2) with ``ch`` and ``2 ch`` channels, one residual block per
    level on the way down and up (skip connections by concatenation), ``mid`` blocks at
    H/2. The time enters as sine/cosine features of t / T through a two-layer MLP added to
    every block.
    """

    def __init__(self, ch: int = 24, mid: int = 1, frequencies: int = 32, size: int = 8, max_frequency: float = 200.0):
        super().__init__()
        self.config = {"ch": ch, "mid": mid, "frequencies": frequencies, "size": size, "max_frequency": max_frequency}
        temb = 4 * ch
        # angular frequencies 1..max_frequency on t / T: the fastest wave spans 2 pi T / 200 ~ 31 levels,
        # so eps is smooth in t between the schedule's levels (a period of ~6 levels made the ODE stiff)
        # computed in float64 whatever the default dtype (then cast with the module), so a session with the float32
        # default and one with float64 (the tests') get the same frequencies and the same samples bit for bit
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), frequencies, dtype=torch.float64))
        self.register_buffer("freqs", freqs, persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(2 * frequencies, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(1, ch, 3, padding=1)
        self.down0 = _ResBlock(ch, ch, temb)
        self.downsample = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.down1 = _ResBlock(2 * ch, 2 * ch, temb)
        self.mid = nn.ModuleList(_ResBlock(2 * ch, 2 * ch, temb) for _ in range(mid))
        self.up1 = _ResBlock(4 * ch, 2 * ch, temb)
        self.upsample = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.up0 = _ResBlock(2 * ch, ch, temb)
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._body(x, self._time_embedding(x, t))

    def _time_embedding(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = (t.to(x.dtype) / NUM_TRAIN_STEPS).reshape(-1, 1) * self.freqs.to(x.dtype)
        return self.time_mlp(torch.cat([torch.sin(tau), torch.cos(tau)], dim=1))

    def _body(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h0 = self.down0(self.conv_in(x), emb)
        h1 = self.down1(self.downsample(h0), emb)
        h = h1
        for block in self.mid:
            h = block(h, emb)
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up0(torch.cat([h, h0], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class DigitsCondUNet(DigitsUNet):
    """Class-conditional eps-UNet: ``forward(x, t, labels)`` with ``labels`` (N,) in 0..10.

    :class:`DigitsUNet` with a learned label embedding (``num_classes + 1`` rows; the last row,
    :data:`NULL_LABEL`, is the "no label" input of classifier-free guidance) added to the time
    embedding of every block. Trained with label dropout (``benchmarks/train_digits.py --cond``),
    so one network gives both the conditional and the unconditional prediction.
    """

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.config["num_classes"] = num_classes
        self.label_emb = nn.Embedding(num_classes + 1, 4 * self.config["ch"])

    @property
    def null_label(self) -> int:
        return int(self.config["num_classes"])

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        labels = torch.as_tensor(labels, device=x.device).long().reshape(-1).expand(x.shape[0])
        emb = self._time_embedding(x, t) + self.label_emb(labels).to(x.dtype)
        return self._body(x, emb)


# -- the classifier --------------------------------------------------------------------------------
class DigitsClassifier(nn.Module):
    """Small CNN on (N, 8, 8) images in [0, 1]: ``features(img)`` (N, feat), ``forward(img)`` logits (N, 10)."""

    def __init__(self, ch: int = 32, feat: int = 64):
        super().__init__()
        self.config = {"ch": ch, "feat": feat}
        self.body = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),  # 4x4
            nn.Conv2d(ch, 2 * ch, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),  # 2x2
            nn.Flatten(),
            nn.Linear(2 * ch * 4, feat),
            nn.SiLU(),
        )
        self.head = nn.Linear(feat, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = (2 * images.to(self.head.weight.dtype) - 1).unsqueeze(1)
        if x.shape[-1] != 8 or x.shape[-2] != 8:  # 16x16 model space: compare at the data's resolution
            x = F.adaptive_avg_pool2d(x, 8)
        return self.body(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


# -- loading ---------------------------------------------------------------------------------------
def _load(cls, path: Path):
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing: run `python benchmarks/train_digits.py` to make it")
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = cls(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.to(torch.float32).eval().requires_grad_(False)


def load_digits_unet(path: str | Path = UNET_WEIGHTS) -> DigitsUNet:
    """The shipped eps-UNet in float32, eval mode (safe load: ``weights_only=True``)."""
    return _load(DigitsUNet, path)


def load_digits_cond_unet(path: str | Path = COND_UNET_WEIGHTS) -> DigitsCondUNet:
    """The shipped class-conditional eps-UNet (``WEAK_COND_UNET_WEIGHTS``: its weaker sibling for
    autoguidance) in float32, eval mode (safe load: ``weights_only=True``)."""
    return _load(DigitsCondUNet, path)


def load_digits_classifier(path: str | Path = CLASSIFIER_WEIGHTS) -> DigitsClassifier:
    """The shipped classifier in float32, eval mode (safe load: ``weights_only=True``)."""
    return _load(DigitsClassifier, path)


# -- the metric ------------------------------------------------------------------------------------
def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(f1, f2) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows = samples).

    ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` (Heusel et al. 2017, the FID
    formula), computed in float64 with symmetric square roots, so it is exactly symmetric in
    its arguments up to rounding and 0 for identical sets.
    """
    a = np.asarray(torch.as_tensor(f1).detach().to(_F64).cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(f2).detach().to(_F64).cpu(), dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"frechet_distance: need two (N, D) feature sets with N >= 2 and equal D, got {a.shape} and {b.shape}"
        )
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))
    return max(value, 0.0)


# -- the benchmark problem -------------------------------------------------------------------------
#: classes holding at least this share of the samples count as covered (half the uniform share 1/10)
COVERAGE_SHARE = 0.05


class DigitsProblem(ModelProblem):
    """The shipped digits UNet as a benchmark problem (name ``digits``).

    Metrics of a batch of samples: ``fdd`` (Frechet distance of the classifier's features
    to the 297 held-out digits), ``coverage`` (share of the 10 classes that the classifier
    assigns to at least 5% of the samples), ``sw`` (sliced Wasserstein to the held-out
    digits in model space); the harness adds RMSE to the reference ODE solution.
    """

    dist_metric = "fdd"

    def __init__(self, samples: int = 128, unet_path=UNET_WEIGHTS, classifier_path=CLASSIFIER_WEIGHTS):
        unet = load_digits_unet(unet_path)
        self.size = int(unet.config["size"])
        super().__init__(
            "digits",
            unet,
            default_schedule(),
            (1, self.size, self.size),
            prediction="eps",
            time="index",
            data=None,
            samples=samples,
            dtype=torch.float32,
            description=f"compact eps-UNet on scikit-learn's 8x8 digits ({self.size}x{self.size}, "
            "shipped weights); FDD to the 297 held-out digits",
            # float64 convolutions are slow on a CPU: references to 1e-5, far below the float32
            # runs' own rounding floor on images of unit scale
            ref_tol=1e-7,
            ref_target=1e-5,
        )
        del self.data  # ModelProblem's held-out tensor: here data(split) is a method
        self.classifier = load_digits_classifier(classifier_path)
        self._cache: dict = {}

    # -- data --------------------------------------------------------------------------------
    def data(self, split: str = "test") -> torch.Tensor:
        """The real digits of ``split`` ("train": 1,500, "test": 297) in the model's space, float64."""
        return _model_space_data(self._cache, split, self.size)

    def labels(self, split: str = "test") -> torch.Tensor:
        return load_digits_split(split)[1]

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples (N, 1, H, W) -> images (N, H, W) in [0, 1]."""
        return to_images(x)

    # -- classifier views ----------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's penultimate features (N, 64) of model-space samples, float64."""
        with torch.no_grad():
            return self.classifier.features(self.to_images(x).float()).to(_F64)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier(self.to_images(x).float()).softmax(1).to(_F64)

    def fdd(self, x: torch.Tensor, split: str = "test") -> float:
        """FDD of model-space samples ``x`` to the real digits of ``split``."""
        if ("feat", split) not in self._cache:
            self._cache[("feat", split)] = self.features(self.data(split))
        return frechet_distance(self.features(x), self._cache[("feat", split)])

    def class_shares(self, x: torch.Tensor) -> torch.Tensor:
        pred = self.probabilities(x).argmax(1)
        return torch.bincount(pred, minlength=10).to(_F64) / pred.numel()

    def coverage(self, x: torch.Tensor) -> float:
        return float((self.class_shares(x) >= COVERAGE_SHARE).to(_F64).mean())

    def metrics(self, x0):
        x0 = x0.detach().to(_F64).cpu()
        return {
            "nll_gap": float("nan"),
            "sw": sliced_wasserstein(x0, self.data("test")),
            "fdd": self.fdd(x0),
            "coverage": self.coverage(x0),
        }


def digits_problem(samples: int = 128, **paths) -> DigitsProblem:
    """The ``digits`` benchmark problem (also usable as ``--model diffsolve.bench.digits:digits_problem``)."""
    return DigitsProblem(samples, **paths)
