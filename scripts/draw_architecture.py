"""Draws aejax's modules and their imports, floor by floor, into docs/images/architecture.png.

    python scripts/draw_architecture.py [--out=docs/images/architecture.png]

A module stands one floor above the highest module it imports (floor 0
imports nothing of aejax), so every arrow points down; an import implied by
a path of others is not drawn. The picture is read from the code, not drawn
by hand. tests/test_architecture.py enforces the
order.
"""

import argparse
import ast
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aejax"


def import_graph() -> dict[str, set[str]]:
  """{module: the aejax modules it imports} for every module of the package."""
  graph = {}
  for path in sorted(PACKAGE.glob("*.py")):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module == "aejax":
        names |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aejax."):
        names.add(node.module.split(".")[1])
    graph[path.stem] = names & {p.stem for p in PACKAGE.glob("*.py")}
  return graph


def transitive_reduction(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  """The graph without A -> C where A reaches C through another import: the structure, legibly."""

  def reach(module: str, seen: set[str]) -> set[str]:
    for target in graph[module]:
      if target not in seen:
        seen.add(target)
        reach(target, seen)
    return seen

  reduced = {}
  for module, imports in graph.items():
    indirect = set().union(*(reach(t, set()) for t in imports)) if imports else set()
    reduced[module] = imports - indirect
  return reduced


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
  memo: dict[str, int] = {}

  def floor(module: str) -> int:
    if module not in memo:
      memo[module] = 1 + max((floor(m) for m in graph[module]), default=-1)
    return memo[module]

  return {module: floor(module) for module in graph}


def _untangle(rows: dict[int, list[str]], graph: dict[str, set[str]], sweeps: int = 12) -> None:
  """Orders each floor by the mean position of its neighbours (the barycenter heuristic), down
  and up in turns, so that fewer arrows cross."""
  users = {m: {a for a, targets in graph.items() if m in targets} for m in graph}

  def position():
    return {m: i / max(len(r) - 1, 1) for r in rows.values() for i, m in enumerate(r)}

  for sweep in range(sweeps):
    order = sorted(rows) if sweep % 2 else sorted(rows, reverse=True)
    for y in order:
      where = position()
      neighbours = {m: (graph[m] | users[m]) for m in rows[y]}
      rows[y].sort(
        key=lambda m: (
          sum(where[n] for n in neighbours[m]) / len(neighbours[m]) if neighbours[m] else where[m]
        )
      )


def draw(out: pathlib.Path) -> None:
  graph = import_graph()
  graph.pop("__init__", None)
  level = floors(graph)
  rows: dict[int, list[str]] = {}
  for module in sorted(graph, key=lambda m: (level[m], m)):
    rows.setdefault(level[module], []).append(module)
  reduced = transitive_reduction(graph)
  _untangle(rows, reduced)
  width = max(len(r) for r in rows.values())
  fig, ax = plt.subplots(figsize=(1.55 * width + 1, 0.95 * len(rows) + 1))
  where = {}
  for y, modules in rows.items():
    offset = (width - len(modules)) / 2
    for i, module in enumerate(modules):
      where[module] = (offset + i, y)
  for module, imports in reduced.items():
    x0, y0 = where[module]
    for target in imports:
      x1, y1 = where[target]
      ax.annotate(
        "",
        xy=(x1, y1 + 0.2),
        xytext=(x0, y0 - 0.2),
        arrowprops=dict(arrowstyle="-|>", color="0.6", lw=0.5, shrinkA=0, shrinkB=0),
      )
  for module, (x, y) in where.items():
    ax.text(
      x, y, module, ha="center", va="center", fontsize=8,
      bbox=dict(boxstyle="round,pad=0.3", fc="#e8f0fe", ec="#3b6fb6", lw=0.8),
    )  # fmt: skip
  ax.set_xlim(-0.8, width - 0.2)
  ax.set_ylim(-0.7, len(rows) - 0.3)
  ax.axis("off")
  ax.set_title(
    "aejax: modules by floor; a module imports only modules below it\n"
    "(an arrow implied by a path of others is left out)",
    fontsize=10,
  )
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=130)
  print(f"wrote {out}: {len(graph)} modules on {len(rows)} floors")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "architecture.png"))
  draw(pathlib.Path(parser.parse_args().out))
