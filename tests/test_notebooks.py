"""Executes every example notebook top to bottom and checks what they report."""

import ast
import pathlib

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


class ThisInterpreterKernelManager(AsyncKernelManager):
  """Starts ipykernel's built-in "python3" kernel with this test's interpreter.

  Without kernel directories, the only kernelspec is the one ipykernel ships,
  whose command is ``sys.executable``: kernels installed for other
  interpreters (in the user's or the system's Jupyter paths) are ignored.
  """

  @default("kernel_spec_manager")
  def _kernel_spec_manager_default(self):
    return KernelSpecManager(kernel_dirs=[])


def execute(path: pathlib.Path, workdir: pathlib.Path) -> nbformat.NotebookNode:
  """Runs the notebook in a fresh kernel whose working directory is ``workdir``."""
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                 kernel_name="python3",
                 kernel_manager_class=ThisInterpreterKernelManager,
                 resources={"metadata": {"path": str(workdir)}}).execute()
  return nb


def tagged_value(nb: nbformat.NotebookNode, tag: str):
  """The Python literal displayed by the cell tagged ``tag``."""
  cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
  assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
  results = [o for o in cells[0].outputs if o.output_type == "execute_result"]
  assert results, f"the cell tagged {tag!r} displayed no value"
  return ast.literal_eval(results[-1].data["text/plain"])


def test_examples_exist():
  names = {p.name for p in NOTEBOOKS}
  assert {"quick_start.ipynb", "composing_strategies.ipynb",
          "seeds_and_sweeps.ipynb", "colab_tpu.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (
          f"{path.name} is stored with outputs; clear them before committing")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  # The kernel inherits this environment; its working directory is tmp_path,
  # so the notebooks' relative log directories ("runs/...") land there.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = execute(path, tmp_path)
  if path.stem == "quick_start":
    accuracy = tagged_value(nb, "final-accuracy")
    assert set(accuracy) == {"naive", "ewc", "replay"}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values()), accuracy
    assert accuracy["replay"] > accuracy["naive"] + 0.2, accuracy
  if path.stem == "composing_strategies":
    forgetting = tagged_value(nb, "forgetting")
    assert forgetting["l2_anchor"] < forgetting["naive"], forgetting
    assert forgetting["replay+ewc"] < forgetting["naive"], forgetting
  if path.stem == "colab_tpu":
    logdir = tmp_path / "runs" / "data_parallel"
    for name in ("metrics.jsonl", "eval_results.csv", "log.txt",
                 "accuracy_matrix.png"):
      assert (logdir / name).is_file(), name
    assert list(logdir.glob("events.out.tfevents.*")), "no TensorBoard events"
