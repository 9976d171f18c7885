"""`WandbWriter`: metrics to Weights & Biases (Avalanche's `WandBLogger`).

jaxcl does not install `wandb`; the writer imports it when it is created.
W&B wants one increasing step per run, while jaxcl's metric families count
different things (`train/...` epochs, `eval/...` experiences, `periodic/...`
optimizer steps). So each family gets its own step metric, declared with
`define_metric`: `train/loss` is logged with `train/step`, `eval/stream/...`
with `eval/step`, and names without a family with `step`. Plots in the W&B
interface then use the right x axis, and no value is dropped for a step that
went back.

Example:
    >>> writer = WandbWriter(project="jaxcl", mode="offline")  # doctest: +SKIP
    >>> writer.write_scalars(0, {"eval/stream/accuracy": 0.9})  # doctest: +SKIP
    >>> writer.close()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from jaxcl.loggers.base import MetricWriter, check_scalars, check_step

__all__ = ["WandbWriter"]

_MAX_BUCKETS = 512  # wandb.Histogram's limit.


def _import_wandb() -> Any:
    try:
        return importlib.import_module("wandb")
    except ImportError as error:
        raise ImportError(
            "WandbWriter needs the wandb package, which jaxcl does not "
            "install: pip install wandb (and wandb login, or mode='offline' "
            "to sync later).") from error


def _family(name: str) -> str:
    """The step metric of `name`: `<family>/step`, or `step` without one."""
    return f"{name.split('/', 1)[0]}/step" if "/" in name else "step"


class WandbWriter(MetricWriter):
    """Logs every write to a W&B run, each metric family on its own step.

    Scalars become numbers, images `wandb.Image`s (one per image of an
    `[N, H, W, C]` batch, as a list), videos `wandb.Video` (`[T, H, W, C]`
    is turned to W&B's `[T, C, H, W]`), audio `wandb.Audio`, texts strings,
    histograms `wandb.Histogram` with the requested bucket count;
    `write_hparams` updates the run's config. Raw TensorBoard summaries are
    ignored.

    Args:
        project: W&B project (`wandb.init(project=...)`).
        name: Run name.
        dir: Folder for W&B's local files.
        config: Initial run config (`write_hparams` adds to it).
        mode: `"online"`, `"offline"` or `"disabled"` (None: W&B's setting).
        run: An existing run to log to instead of starting one; `close`
            then leaves it open.
        **init_kwargs: Other `wandb.init` arguments (`entity`, `group`,
            `tags`, ...).

    Raises:
        ImportError: If `wandb` is not installed.
    """

    def __init__(self, project: str | None = None, *,
                 name: str | None = None, dir: str | None = None,
                 config: Mapping[str, Any] | None = None,
                 mode: str | None = None, run: Any = None,
                 **init_kwargs: Any):
        self._wandb = _import_wandb()
        self._owns_run = run is None
        if run is None:
            run = self._wandb.init(project=project, name=name, dir=dir,
                                   config=dict(config or {}), mode=mode,
                                   **init_kwargs)
        self._run = run
        self._defined: set[str] = set()  # Step metrics and plain names.

    def _log(self, step: int, values: Mapping[str, Any],
             convert: Callable[[Any], Any]) -> None:
        step = check_step(step)
        by_family: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            by_family.setdefault(_family(name), {})[name] = convert(value)
        for step_metric, logged in by_family.items():
            if step_metric not in self._defined:
                self._run.define_metric(step_metric)
                if step_metric != "step":  # A family: all its names at once.
                    self._run.define_metric(step_metric[:-len("step")] + "*",
                                            step_metric=step_metric)
                self._defined.add(step_metric)
            for name in logged:
                if step_metric == "step" and name not in self._defined:
                    self._run.define_metric(name, step_metric="step")
                    self._defined.add(name)
            self._run.log({step_metric: step, **logged})

    def write_scalars(self, step: int,
                      scalars: Mapping[str, ArrayLike]) -> None:
        check_scalars(scalars)
        self._log(step, scalars, float)

    def write_images(self, step: int, images: Mapping[str, ArrayLike]) -> None:
        def convert(value):
            array = np.asarray(value)
            if array.ndim == 3:
                return self._wandb.Image(array)
            return [self._wandb.Image(image) for image in array]
        self._log(step, images, convert)

    def write_videos(self, step: int, videos: Mapping[str, ArrayLike]) -> None:
        def convert(value):
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.floating):
                # W&B casts frames to uint8: floats in [0, 1] would be 0.
                array = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
            # W&B's layout is [(N,) T, C, H, W]; clu's is [(N,) T, H, W, C].
            return self._wandb.Video(np.moveaxis(array, -1, -3))
        self._log(step, videos, convert)

    def write_audios(self, step: int, audios: Mapping[str, ArrayLike], *,
                     sample_rate: int) -> None:
        def convert(value):
            return [self._wandb.Audio(clip, sample_rate=sample_rate)
                    for clip in np.asarray(value)]
        self._log(step, audios, convert)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._log(step, texts, str)

    def write_histograms(self, step: int, arrays: Mapping[str, ArrayLike],
                         num_buckets: Mapping[str, int] | None = None) -> None:
        buckets = dict(num_buckets or {})
        for name, count in buckets.items():
            if not 1 <= count <= _MAX_BUCKETS:
                raise ValueError(
                    f"num_buckets[{name!r}]={count}: W&B histograms take 1 "
                    f"to {_MAX_BUCKETS} buckets.")
        histograms = {
            name: self._wandb.Histogram(np_histogram=np.histogram(
                np.asarray(value).ravel(), bins=buckets.get(name, 64)))
            for name, value in arrays.items()}
        self._log(step, histograms, lambda histogram: histogram)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._run.config.update(dict(hparams), allow_val_change=True)

    def close(self) -> None:
        if self._owns_run:
            self._run.finish()
