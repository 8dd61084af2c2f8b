"""The package's layers: each module imports only modules below it, at the top of the file.

LAYERS lists aejax's modules from the bottom up; docs/architecture.md draws
them. A module may import the ones listed before it, never one after it (an
upward import, which is also how every cycle starts), and never inside a
function (the usual way to hide a cycle). A new module must be placed here.
The subpackage aejax/zoo/ is one layer: its files import each other and what
lies below it.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "aejax"

LAYERS = (
  # Foundations: no aejax imports but errors.
  "errors", "progress", "accelerators", "compilation", "utilisation", "image_metrics", "figures",
  "latent_figures", "workdir", "runner", "distributed", "datafiles", "ground_truth", "dsprites",
  "chorales", "data", "study_stats", "music",
  # What a model is and how it learns.
  "tasks", "losses", "layers", "networks", "autoencoder", "vae", "models", "optim", "configs",
  "objectives", "probes", "disentanglement",
  # The model zoo (aejax/zoo/): models imports its files by name, never by an import statement.
  "zoo",
  # How it runs: devices, metrics, checkpoints, the device programs, the loop.
  "parallel", "padding", "metrics", "checkpoint", "steps", "feeding", "estimators", "train",
  # What a trained run offers: the API, its pictures, its evaluation.
  "samplers", "api", "melodies", "visualize", "frechet", "fid", "evaluate", "pca_vs_ae",
  # Grids of runs.
  "sweep_grid", "report", "sweep", "sweep_worker",
  # Entry points and the package's face.
  "main", "use", "__init__",
)  # fmt: skip


SUBPACKAGES = ("zoo",)


def sources(module: str) -> list[str]:
  """The source of a module, or of every file of a subpackage layer."""
  if module in SUBPACKAGES:
    return [path.read_text() for path in sorted((PACKAGE / module).glob("*.py"))]
  return [(PACKAGE / f"{module}.py").read_text()]


def aejax_imports(source: str) -> list[tuple[str, int, bool]]:
  """(imported aejax module, line, at module level) for every import of aejax in `source`."""
  tree = ast.parse(source)
  top_level = {id(node) for node in tree.body}
  found = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      if node.module == "aejax":
        names = [alias.name for alias in node.names]
      elif node.module.startswith("aejax."):
        names = [node.module.split(".")[1]]
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name == "aejax":
          names.append("__init__")
        elif alias.name.startswith("aejax."):
          names.append(alias.name.split(".")[1])
    found += [(name, node.lineno, id(node) in top_level) for name in names]
  return found


def violations(module: str, source: str, layers=LAYERS) -> list[str]:
  """What breaks the layering in `module`'s `source`: upward, unknown and function-level imports."""
  rank = {name: i for i, name in enumerate(layers)}
  out = []
  for name, line, top_level in aejax_imports(source):
    where = f"aejax/{module}.py:{line}"
    if name == module and module in SUBPACKAGES and top_level:
      continue  # A subpackage's files import each other.
    if not top_level:
      out.append(f"{where}: imports aejax.{name} inside a function")
    elif name not in rank:
      out.append(f"{where}: imports aejax.{name}, which is not in LAYERS")
    elif rank[name] >= rank[module]:
      out.append(f"{where}: imports aejax.{name}, which is not below {module}")
  return out


def test_every_module_has_a_layer():
  modules = {p.stem for p in PACKAGE.glob("*.py")} | set(SUBPACKAGES)
  assert modules == set(LAYERS), (
    f"not in LAYERS: {sorted(modules - set(LAYERS))}; no such module: "
    f"{sorted(set(LAYERS) - modules)}"
  )


@pytest.mark.parametrize("module", LAYERS)
def test_imports_go_down_only_and_at_module_level(module):
  assert [v for source in sources(module) for v in violations(module, source)] == []


def test_the_package_has_no_import_cycle():
  graph = {
    m: {name for source in sources(m) for name, _, _ in aejax_imports(source)} - {m} for m in LAYERS
  }
  state = {}

  def visit(node, path):
    if state.get(node) == "done":
      return
    assert state.get(node) != "open", "import cycle: " + " -> ".join([*path, node])
    state[node] = "open"
    for child in sorted(graph.get(node, ())):
      visit(child, [*path, node])
    state[node] = "done"

  for module in LAYERS:
    visit(module, [])


def test_the_check_catches_upward_function_level_and_unknown_imports():
  layers = ("errors", "data", "train")
  source = (
    "from aejax import errors\n"
    "from aejax import train\n"  # Upward.
    "import aejax.nowhere\n"  # Unknown.
    "def f():\n"
    "  from aejax import errors\n"  # Function-level.
  )
  found = violations("data", source, layers)
  assert len(found) == 3
  assert "aejax/data.py:2: imports aejax.train, which is not below data" in found
  assert "aejax/data.py:3: imports aejax.nowhere, which is not in LAYERS" in found
  assert "aejax/data.py:5: imports aejax.errors inside a function" in found
