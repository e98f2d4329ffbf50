"""The class-conditional digits model as a benchmark problem for guided sampling (``digits-cond``).

Models, trained by ``python benchmarks/train_digits.py --cond`` (see its docstring for the commands):

* :class:`~diffsolve.bench.digits.DigitsCondUNet` (``digits_cond_unet.pt``): the digits UNet with a
  label embedding of 10 classes and a null label (:data:`~diffsolve.bench.digits.NULL_LABEL`),
  trained with 15% label dropout, so one network gives the conditional and the unconditional eps;
* its deliberately weaker sibling (``digits_cond_unet_weak.pt``: a third of the channels, an eighth of
  the training steps), the guiding model of autoguidance.

Metrics of samples drawn for requested labels (:meth:`DigitsCondProblem.metrics`):

* ``accuracy``: share of samples the shipped classifier assigns to the requested label;
* ``fdd_classwise``: the mean over the 10 classes of FDD between the samples requested for class c and
  the *train* digits of class c (classifier features, :func:`~diffsolve.bench.digits.frechet_distance`);
  the real held-out digits score :meth:`DigitsCondProblem.real_fdd_classwise` on the same footing
  (:meth:`DigitsCondProblem.eval_labels` requests exactly the held-out set's labels, so sample sets
  and real sets have the same size per class, and FDD's small-sample bias is the same);
* ``fdd``: FDD of all samples to all train digits;
* ``saturation``: share of pixels beyond the data range [-1, 1] by more than :data:`SATURATION_MARGIN`
  (0.1, 5% of the range: a sample's background a little under -1 is not counted), which
  :meth:`to_images` clips; real digits have none. Large guidance scales push pixels past the range.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..analytic import default_schedule
from ..wrapper import DiffusionODE
from .digits import (
    CLASSIFIER_WEIGHTS,
    COND_UNET_WEIGHTS,
    NULL_LABEL,
    WEAK_COND_UNET_WEIGHTS,
    _model_space_data,
    frechet_distance,
    load_digits_classifier,
    load_digits_cond_unet,
    load_digits_split,
    to_images,
)

__all__ = ["DigitsCondProblem", "digits_cond_problem"]

_F64 = torch.float64
#: how far past the data range [-1, 1] a pixel must be to count as saturated (5% of the range)
SATURATION_MARGIN = 0.1


class DigitsCondProblem:
    """The shipped class-conditional digits UNet, its weak sibling and the metrics of guided samples."""

    name = "digits-cond"

    def __init__(
        self,
        samples: int = 297,
        unet_path: str | Path = COND_UNET_WEIGHTS,
        weak_path: str | Path = WEAK_COND_UNET_WEIGHTS,
        classifier_path: str | Path = CLASSIFIER_WEIGHTS,
    ):
        self.unet = load_digits_cond_unet(unet_path)
        self.weak_path = Path(weak_path)
        self._weak = None
        self.size = int(self.unet.config["size"])
        self.shape = (1, self.size, self.size)
        self.schedule = default_schedule()
        self.samples = int(samples)
        self.classifier = load_digits_classifier(classifier_path)
        self._cache: dict = {}
        self._models: dict = {}

    # -- models ----------------------------------------------------------------------------------
    def _model(self, which: str, dtype: torch.dtype):
        key = (which, dtype)
        if key not in self._models:
            if which == "weak":
                if self._weak is None:
                    self._weak = load_digits_cond_unet(self.weak_path)
                base = self._weak
            else:
                base = self.unet
            net = base if dtype == torch.float32 else _cast(base, dtype)
            self._models[key] = lambda x, t, labels, _net=net: _net(x, t, labels)
        return self._models[key]

    def weak_model(self, dtype: torch.dtype = torch.float32):
        """The weaker conditional model, ``weak(x, t, labels)`` (autoguidance's guide)."""
        return self._model("weak", dtype)

    def guidance(self, name: str, scale: float, dtype: torch.dtype = torch.float32, **options):
        """``ds.make_guidance(name, scale=scale, **options)``; for ``autoguidance`` the shipped weak model
        is filled in as ``weak_model`` (in ``dtype``)."""
        from ..guidance import make_guidance

        if name == "autoguidance" and "weak_model" not in options:
            options["weak_model"] = self.weak_model(dtype)
        return make_guidance(name, scale=scale, **options)

    def ode(
        self,
        dtype: torch.dtype = torch.float32,
        labels: torch.Tensor | None = None,
        guidance=None,
        *,
        denoised_transform=None,
    ) -> DiffusionODE:
        """The ODE that samples the requested ``labels`` (LongTensor (N,) in 0..9).

        ``guidance``: None (the conditional model), a float (classifier-free guidance with the null
        label as the unconditional input, exactly ``ds.wrap(guidance=w)``) or a method from
        ``ds.make_guidance`` / :meth:`guidance`. ``labels=None`` is the unconditional model.
        """
        model = self._model("main", dtype)
        time_dtype = _F64 if dtype == _F64 else torch.float32
        common = dict(time="index", time_dtype=time_dtype, denoised_transform=denoised_transform)
        if labels is None:
            if guidance is not None:
                raise ValueError("digits-cond: guidance needs labels= (the classes to sample)")
            return DiffusionODE(model, self.schedule, model_kwargs={"labels": _null(1)}, **common)
        labels = _check_labels(labels)
        if guidance is None:
            return DiffusionODE(model, self.schedule, model_kwargs={"labels": labels}, **common)
        weak = getattr(guidance, "second", None) == "weak"  # autoguidance: both models see the labels
        return DiffusionODE(
            model,
            self.schedule,
            guidance=guidance,
            cond={"labels": labels},
            uncond=None if weak else {"labels": _null(labels.numel())},
            **common,
        )

    def x_T(self, seed: int, n: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Start noise (n, 1, 8, 8) from a generator seeded with ``seed`` (float64 draw, cast)."""
        n = self.samples if n is None else int(n)
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn((n, *self.shape), generator=g, dtype=_F64).to(dtype)

    def eval_labels(self) -> torch.Tensor:
        """The labels of the 297 held-out digits, in order: request these to compare with the real set."""
        return self.labels("test")

    # -- data ------------------------------------------------------------------------------------
    def data(self, split: str = "test") -> torch.Tensor:
        """The real digits of ``split`` ("train": 1,500, "test": 297) in model space, float64."""
        return _model_space_data(self._cache, split, self.size)

    def labels(self, split: str = "test") -> torch.Tensor:
        """The labels (LongTensor) of the real digits of ``split``."""
        if ("labels", split) not in self._cache:
            self._cache[("labels", split)] = load_digits_split(split)[1]
        return self._cache[("labels", split)].clone()

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples (N, 1, H, W) -> images (N, H, W) in [0, 1] (clamped)."""
        return to_images(x)

    # -- metrics ---------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier.features(self.to_images(x).float()).to(_F64)

    def _train_features(self):
        if "train_feat" not in self._cache:
            self._cache["train_feat"] = self.features(self.data("train"))
        return self._cache["train_feat"], self.labels("train")

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.no_grad():
            pred = self.classifier.head(self.features(x).float()).argmax(1)
        return float((pred == _check_labels(labels)).to(_F64).mean())

    def fdd_classwise(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """Mean over classes of FDD(samples requested as class c, train digits of class c)."""
        labels = _check_labels(labels)
        feat = self.features(x)
        ref, ref_labels = self._train_features()
        values = []
        for c in range(10):
            mine = feat[labels == c]
            if mine.shape[0] < 2:
                raise ValueError(f"fdd_classwise needs at least 2 samples of every class; class {c} has {len(mine)}")
            values.append(frechet_distance(mine, ref[ref_labels == c]))
        return sum(values) / len(values)

    def real_fdd_classwise(self) -> float:
        """:meth:`fdd_classwise` of the real held-out digits (the number a perfect model would get)."""
        return self.fdd_classwise(self.data("test"), self.labels("test"))

    @staticmethod
    def saturation(x: torch.Tensor) -> float:
        """Share of pixels beyond the data range [-1, 1] by more than :data:`SATURATION_MARGIN`."""
        return float((x.detach().to(_F64).abs() > 1.0 + SATURATION_MARGIN).to(_F64).mean())

    def metrics(self, x0: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        x0 = x0.detach().to(_F64).cpu()
        ref, _ = self._train_features()
        return {
            "accuracy": self.accuracy(x0, labels),
            "fdd_classwise": self.fdd_classwise(x0, labels),
            "fdd": frechet_distance(self.features(x0), ref),
            "saturation": self.saturation(x0),
        }


def _cast(net, dtype):
    import copy

    return copy.deepcopy(net).to(dtype)


def _null(n: int) -> torch.Tensor:
    return torch.full((n,), NULL_LABEL, dtype=torch.long)


def _check_labels(labels) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.dim() != 1:
        raise TypeError(f"labels must be a 1-D LongTensor of classes 0..9, got {labels!r}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError(f"labels must be classes 0..9, got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels


def digits_cond_problem(samples: int = 297, **paths) -> DigitsCondProblem:
    """The ``digits-cond`` problem (class-conditional digits UNet, weak sibling, classifier)."""
    return DigitsCondProblem(samples, **paths)
