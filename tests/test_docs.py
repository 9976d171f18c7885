"""The documentation stays true to the code.

* The API reference builds offline with the command of docs/api.md, and
  every page documents every name its package exports.
* Every ``jaxcl.…`` name quoted in docs/migration.md resolves, as do the
  names its code blocks import from jaxcl.
* Relative links of the pages written for users of Avalanche resolve.
"""

import importlib
import os
import pathlib
import re
import shlex
import subprocess
import sys
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Packages whose page must document every name of their ``__all__``, and the
# page pdoc writes for each.
_PAGES = {
    "jaxcl": "jaxcl.html",
    "jaxcl.benchmarks": "jaxcl/benchmarks.html",
    "jaxcl.benchmarks.augment": "jaxcl/benchmarks/augment.html",
    "jaxcl.benchmarks.sources": "jaxcl/benchmarks/sources.html",
    "jaxcl.checkpoint": "jaxcl/checkpoint.html",
    "jaxcl.evaluation": "jaxcl/evaluation.html",
    "jaxcl.loggers": "jaxcl/loggers.html",
    "jaxcl.models": "jaxcl/models.html",
    "jaxcl.strategies": "jaxcl/strategies.html",
    "jaxcl.strategies.base": "jaxcl/strategies/base.html",
    "jaxcl.strategies.buffers": "jaxcl/strategies/buffers.html",
    "jaxcl.strategies.exemplars": "jaxcl/strategies/exemplars.html",
    "jaxcl.strategies.model_utils": "jaxcl/strategies/model_utils.html",
    "jaxcl.training": "jaxcl/training.html",
    "jaxcl.training.optim": "jaxcl/training/optim.html",
    "jaxcl.training.state": "jaxcl/training/state.html",
}
# A few names users look for first, checked by name in case an ``__all__``
# loses them.
_KEY_NAMES = {
    "jaxcl": ["fit", "sweep", "Result", "enable_compilation_cache"],
    "jaxcl.training": ["fit", "make_train_experience", "TrainState"],
    "jaxcl.strategies": ["chain", "naive", "ewc", "replay", "Strategy"],
    "jaxcl.benchmarks": ["split_mnist", "class_incremental", "split_online",
                         "Benchmark"],
    "jaxcl.evaluation": ["metrics", "stream_forgetting"],
    "jaxcl.models": ["MLP", "MultiHead"],
    "jaxcl.loggers": ["create_writers", "CsvWriter"],
    "jaxcl.checkpoint": ["Checkpointer"],
    "jaxcl.strategies.base": ["Strategy", "chain"],
    "jaxcl.training.optim": ["restart_schedules", "reset_optimizer_state",
                             "one_schedule_step", "schedule"],
    "jaxcl.training.state": ["read_in_shares", "put_experiences"],
}


def _api_command() -> list[str]:
  """The build command of docs/api.md: the fenced block that runs pdoc."""
  text = (DOCS / "api.md").read_text()
  blocks = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S)
            if "pdoc" in b]
  assert len(blocks) == 1, "docs/api.md must hold one bash block running pdoc"
  return shlex.split(blocks[0].replace("\\\n", " "))


def _section_ids(html: str) -> set[str]:
  return set(re.findall(r'<section id="([^"]+)"', html))


@pytest.fixture(scope="module")
def api_html(tmp_path_factory):
  """Builds the reference with docs/api.md's command into a temporary folder
  (its tests share an xdist group: one worker builds it)."""
  args = _api_command()
  assert args[0] == "python" and "-o" in args, args
  out = tmp_path_factory.mktemp("api")
  args[0] = sys.executable
  args[args.index("-o") + 1] = str(out)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  for problem in ("does not resolve", "Couldn't import", "Error loading",
                  "Error importing"):
    assert problem not in done.stderr, done.stderr[-3000:]
  return out


@pytest.mark.xdist_group("api_html")
def test_api_reference_documents_every_exported_name(api_html):
  assert (api_html / "index.html").is_file()
  assert (api_html / "search.js").is_file()
  for module_name, page in _PAGES.items():
    path = api_html / page
    assert path.is_file(), f"pdoc wrote no page for {module_name}"
    ids = _section_ids(path.read_text())
    module = importlib.import_module(module_name)
    exported = [n for n in module.__all__
                if not isinstance(getattr(module, n), type(os))]  # not modules
    missing = sorted(set(exported) - ids)
    assert not missing, f"{page} does not document {missing}"
    missing = sorted(set(_KEY_NAMES.get(module_name, ())) - ids)
    assert not missing, f"{page} does not document {missing}"


@pytest.mark.xdist_group("api_html")
def test_api_top_level_entries_are_not_empty(api_html):
  """The lazily loaded top-level names get their docstrings, not a bare name."""
  html = (api_html / "jaxcl.html").read_text()
  start = html.index('<section id="fit">')
  entry = html[start:html.index("</section>", start)]
  assert "def" in entry and "benchmark" in entry


# ------------------------------------------------------ docs/migration.md

_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
_NAME = re.compile(r"\bjaxcl(?:\.[A-Za-z_]\w*)+")
_IMPORT = re.compile(r"^\s*from\s+(jaxcl(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n]+)",
                     re.M)
_PLANNED = re.compile(r"\s*\(planned\)")
_FILE = re.compile(r"\.(html|md|py|json|jsonl|csv|txt|png)$")  # jaxcl.html...


def _resolve(dotted: str):
  """Imports the longest module prefix of ``dotted``, then gets the rest."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ModuleNotFoundError:
      continue
    for attr in parts[i:]:
      obj = getattr(obj, attr)
    return obj
  raise ModuleNotFoundError(dotted)


def _names(text: str) -> tuple[set[str], set[str]]:
  """``jaxcl.…`` names in code spans and blocks: (checked, marked planned).

  A name is planned when its inline code span is followed by "(planned)".
  Names imported with ``from jaxcl... import a, b`` in code blocks count as
  ``jaxcl....a``, ``jaxcl....b``.
  """
  checked, planned = set(), set()
  for match in _CODE.finditer(text):
    code = match.group()
    names = {n for n in _NAME.findall(code) if not _FILE.search(n)}
    if code.startswith("```"):
      for module, imported in _IMPORT.findall(code):
        imported = re.sub(r"#[^\n]*", "", imported).strip("()")
        names |= {f"{module}.{n.strip()}" for n in imported.split(",")
                  if n.strip()}
    elif _PLANNED.match(text, match.end()):
      planned |= names
      continue
    checked |= names
  return checked - planned, planned


@pytest.mark.parametrize("page", ["migration.md", "api.md", "loggers.md"])
def test_quoted_names_resolve(page):
  path = DOCS / page
  if not path.exists():
    pytest.skip(f"docs/{page} does not exist")
  checked, planned = _names(path.read_text())
  if page == "migration.md":  # The extraction found the guide's names.
    assert len(checked) > 50, sorted(checked)
  unresolved = []
  for name in sorted(checked):
    try:
      _resolve(name)
    except (ImportError, AttributeError) as e:
      unresolved.append(f"{name} ({type(e).__name__}: {e})")
  assert not unresolved, f"docs/{page} names what does not exist:\n" + \
      "\n".join(unresolved)
  for name in sorted(planned):
    try:
      _resolve(name)
    except (ImportError, AttributeError):
      continue
    warnings.warn(f"docs/{page} marks {name} as planned, but it exists "
                  "now: remove the '(planned)' marker.", stacklevel=1)


def test_name_extraction():
  text = ("Use `jaxcl.fit(model, ...)` and `jaxcl.strategies.nope` (planned).\n"
          "Open `jaxcl/strategies.html` or `jaxcl.html`.\n"
          "```python\nfrom jaxcl.strategies import (chain,\n    ewc)\n"
          "x = jaxcl.models.MLP(10)\n```\n")
  checked, planned = _names(text)
  assert checked == {"jaxcl.fit", "jaxcl.strategies", "jaxcl.strategies.chain",
                     "jaxcl.strategies.ewc", "jaxcl.models.MLP"}
  assert planned == {"jaxcl.strategies.nope"}
  assert _resolve("jaxcl.benchmarks.augment.random_crop")
  with pytest.raises(AttributeError):
    _resolve("jaxcl.strategies.not_a_strategy")


@pytest.mark.parametrize("page", ["migration.md", "api.md", "loggers.md"])
def test_relative_links_resolve(page):
  path = DOCS / page
  if not path.exists():
    pytest.skip(f"docs/{page} does not exist")
  targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
  broken = [t for t in targets if "://" not in t
            and not (path.parent / t).exists()]
  assert not broken, f"docs/{page} links to missing files: {broken}"
