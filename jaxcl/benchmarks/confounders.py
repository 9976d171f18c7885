"""ConCon: continual learning with confounders (Busch et al., 2024).

"Where is the Truth? The Risk of Getting Confounded in a Continual World"
(arXiv:2402.06434): CLEVR scenes of two classes, positive and negative,
that a ground-truth rule separates; each of three tasks adds a confounder, a
feature that separates the task's classes as well as the rule does but
changes from task to task. ``disjoint``: a task's confounder never appears
in the other tasks; ``strict``: it may appear in them as a random feature of
both classes; ``unconfounded``: one task, no confounder. Avalanche's
``ConConDisjoint``, ``ConConStrict`` and ``ConConUnconfounded``, read from
the unzipped official archives with Pillow.

Example:
  >>> bench = concon("disjoint", data_dir="~/data")  # doctest: +SKIP
  >>> len(bench.train_stream), bench.n_classes  # doctest: +SKIP
  (3, 2)
"""

from __future__ import annotations

import random
from pathlib import Path
from jaxcl import _validation
from jaxcl.benchmarks import files
from jaxcl.benchmarks.scenario import Benchmark, normalizer

__all__ = ["CONCON_VARIANTS", "concon"]

# Each variant's folder in its archive, and its number of tasks.
CONCON_VARIANTS = {"disjoint": ("case_disjoint_main", 3),
                   "strict": ("case_strict_main", 3),
                   "unconfounded": ("unconfounded", 1)}
"""ConCon's variants: their archive's folder and number of tasks."""

_ADVICE = (
    "Download case_disjoint_main.zip, case_strict_main.zip or "
    "unconfounded.zip from https://zenodo.org/records/10630482 and unzip "
    "them into data_dir/concon (Avalanche's dataset_root), giving "
    "data_dir/concon/case_disjoint_main/{train,test}/images/t0/<class>/...")

def _task_files(folder: Path, classes: list[str] | None
                ) -> tuple[list[files.FileAndLabel], list[str]]:
  """One task's images as ``(path, class index)``, the classes being its
  sub-folders in sorted order; checked against ``classes`` if given."""
  if not folder.is_dir():
    raise ValueError(f"{folder} is missing: ConCon's files are not complete "
                     f"there. {_ADVICE}")
  # Hidden entries (.DS_Store, .ipynb_checkpoints) are not data.
  found = sorted(p.name for p in folder.iterdir()
                 if p.is_dir() and not p.name.startswith("."))
  if classes is not None and found != classes:
    raise ValueError(f"{folder} holds the class folders {found}, another "
                     f"task or split {classes}; expected the same classes "
                     f"everywhere. {_ADVICE}")
  entries = []
  for label, name in enumerate(found):
    images = sorted(p for p in (folder / name).iterdir()
                    if p.is_file() and not p.name.startswith("."))
    if not images:
      raise ValueError(f"The class folder {folder / name} holds no image. "
                       f"{_ADVICE}")
    entries += [(str(path), label) for path in images]
  if not entries:
    raise ValueError(f"{folder} holds no class folder. {_ADVICE}")
  return entries, found


@_validation.checks_bool_arguments
def concon(
    variant: str = "disjoint",
    n_experiences: int | None = None,
    *,
    seed: int = 0,
    shuffle_order: bool = False,
    image_size: int | None = None,
    data_dir: files.PathLike | None = None,
) -> Benchmark:
  """ConCon (Avalanche's ``ConConDisjoint``, ``ConConStrict``,
  ``ConConUnconfounded``): one experience per task, two classes.

  Reads ``data_dir/concon/<archive folder>/{train,test}/images/t<task>/
  <class>/<image>`` (the archives unzipped into ``data_dir/concon``, which
  Avalanche calls ``dataset_root``). Experience ``i`` holds task ``i``'s
  training images, its test experience the task's test images; every
  experience has the same two classes (with three experiences a
  domain-incremental stream; task label 0). The class folders are ``0``
  (negative) and ``1`` (positive); a class's id is its folder's position
  in sorted order, so the folder's name (Avalanche numbers the folders in
  the order the file system lists them). Images are read as RGB and scaled
  to ``[-1, 1]`` (Avalanche's ``Normalize(0.5, 0.5)``), without
  augmentation. The archives' ``val/`` split is not read, as in
  Avalanche. The paper's measure, accuracy on unconfounded images after
  training on a confounded stream, is the test stream of
  ``concon("unconfounded")`` put in place of this one's (see
  docs/benchmarks.md).

  Args:
    variant: ``"disjoint"``, ``"strict"`` or ``"unconfounded"``.
    n_experiences: 3 (one per task) or 1 (the three tasks' images in one
      experience, as Avalanche concatenates them); default 3, and 1 for
      ``"unconfounded"``, which has one task.
    seed: Seed of the task order with ``shuffle_order`` (Python's
      ``random``, seeded as Avalanche seeds it: the same seed gives
      Avalanche's order).
    shuffle_order: Shuffle the order of the three tasks (refused with one
      experience; Avalanche ignores it there).
    image_size: Side to resize every image to (bilinear); ``None`` keeps
      the stored size, as Avalanche does (it must then be the same for
      every image).
    data_dir: The folder holding ``concon/``.

  Returns:
    A :class:`Benchmark` of two classes (domain-incremental with three
    experiences).

  Raises:
    ValueError: If an argument is out of range, or the files are missing or
      inconsistent (checked before any image is decoded).

  Example:
    >>> bench = concon("strict", shuffle_order=True, seed=1,
    ...                data_dir="~/data")  # doctest: +SKIP
  """
  _validation.check_choice("variant", variant, CONCON_VARIANTS)
  folder, n_tasks = CONCON_VARIANTS[variant]
  if n_experiences is None:
    n_experiences = n_tasks
  allowed = (n_tasks, 1) if n_tasks > 1 else (1,)
  if isinstance(n_experiences, bool) or n_experiences not in allowed:
    raise ValueError(f"n_experiences must be {' or '.join(map(str, allowed))}"
                     f" for ConCon {variant} ({n_tasks} task"
                     f"{'s' if n_tasks > 1 else ''}), got {n_experiences!r}.")
  _validation.check_seed("seed", seed)
  if shuffle_order and n_experiences == 1:
    raise ValueError(f"shuffle_order=True orders the tasks' experiences, but "
                     f"ConCon {variant} with n_experiences=1 has one "
                     "experience; expected shuffle_order=False (Avalanche "
                     "ignores it).")
  size = (None if image_size is None else
          (_validation.check_positive_int("image_size", image_size),) * 2)
  root = files.local_data_dir("concon", data_dir, _ADVICE) / "concon" / folder
  classes = None
  lists: dict[str, list[list[files.FileAndLabel]]] = {"train": [], "test": []}
  for split, tasks in lists.items():
    for task in range(n_tasks):
      entries, classes = _task_files(root / split / "images" / f"t{task}",
                                     classes)
      tasks.append(entries)
  train, test = lists["train"], lists["test"]
  if n_experiences == 1:
    train, test = [sum(train, [])], [sum(test, [])]
  elif shuffle_order:
    # Avalanche shuffles both lists after seeding Python's random with the
    # same seed: one permutation of the tasks.
    order = list(range(n_tasks))
    random.Random(seed).shuffle(order)
    train, test = [train[t] for t in order], [test[t] for t in order]
  return files.paths_benchmark(train, test, image_size=size,
                               preprocess=normalizer(0.5, 0.5),
                               name=f"concon_{variant}")

