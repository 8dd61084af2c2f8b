"""Executes the notebooks in notebooks/ top to bottom and writes executed copies, with outputs.

  python scripts/run_notebooks.py [--small] [--out=runs/notebooks] [--only=latent_sizes]

Each notebook runs in a `python3` kernel (jupyter_client starts it with this
interpreter, so in the venv that has aejax) with the notebook's own folder as
the working folder, as in `jupyter lab notebooks/`. `--small` sets
AEJAX_NOTEBOOK_SMALL=1: every training shrinks to seconds, which is what CI
checks. The executed copy is written even when a cell fails; the exit status
is 1 if any cell of any notebook raised. tests/test_notebooks.py runs the same
`execute_notebook`.
"""

import argparse
import os
import pathlib
import sys
import time

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = ("autoencoders", "latent_sizes")
KERNEL = "python3"
# The environment variables the notebooks read (their first code cell).
SMALL_ENV = "AEJAX_NOTEBOOK_SMALL"
RUNS_ENV = "AEJAX_NOTEBOOK_RUNS"
# A cell that raised, ran past --timeout, or took the kernel down.
NOTEBOOK_ERRORS = (
  nbclient.exceptions.CellExecutionError,
  nbclient.exceptions.CellTimeoutError,
  nbclient.exceptions.DeadKernelError,
)


def execute(nb, cwd, env=None, timeout: int | None = None):
  """Runs every code cell of notebook `nb` (in place) in a fresh python3 kernel started in `cwd`
  with environment `env` (default: this process's); returns `nb`.

  Raises nbclient's CellExecutionError at the first cell that raises; `nb`
  then holds the outputs up to and including that cell.
  """
  client = nbclient.NotebookClient(
    nb,
    kernel_name=KERNEL,
    timeout=timeout,  # Per cell; None: a training cell may take minutes.
    resources={"metadata": {"path": str(cwd)}},
  )
  client.execute(env=dict(os.environ if env is None else env))
  return nb


def execute_notebook(
  path,
  out_path,
  *,
  small: bool = False,
  runs_dir=None,
  env=None,
  timeout: int | None = None,
):
  """Executes the notebook at `path` with its folder as cwd and writes the executed copy to
  `out_path` (also when a cell fails, to see where); returns the executed notebook.

  small: set AEJAX_NOTEBOOK_SMALL=1 (tiny trainings). runs_dir: set
  AEJAX_NOTEBOOK_RUNS, the folder the notebook trains in (else its own
  default). env: the kernel's environment before those two (default: this
  process's).
  """
  path, out_path = pathlib.Path(path), pathlib.Path(out_path)
  env = dict(os.environ if env is None else env)
  if small:
    env[SMALL_ENV] = "1"
  if runs_dir is not None:
    env[RUNS_ENV] = str(pathlib.Path(runs_dir).absolute())
  nb = nbformat.read(path, as_version=4)
  try:
    execute(nb, path.parent.absolute(), env, timeout)
  finally:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_path)
  return nb


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--out", default=str(ROOT / "runs" / "notebooks"), help="Folder of the executed copies."
  )
  parser.add_argument(
    "--small", action="store_true", help=f"Tiny trainings: set {SMALL_ENV}=1 (seconds each)."
  )
  parser.add_argument(
    "--runs_dir",
    default=None,
    help=f"Folder the notebooks train in ({RUNS_ENV}); default: each notebook's own choice.",
  )
  parser.add_argument(
    "--only", default=",".join(NOTEBOOKS), help="Comma-separated notebook names to run."
  )
  parser.add_argument("--timeout", type=int, default=None, help="Seconds per cell (default none).")
  args = parser.parse_args(argv)

  names = [name.strip() for name in args.only.split(",") if name.strip()]
  unknown = sorted(set(names) - set(NOTEBOOKS))
  if unknown:
    parser.error(f"--only: unknown notebook {', '.join(unknown)}; valid: {', '.join(NOTEBOOKS)}")
  failed = []
  for name in names:
    out_path = pathlib.Path(args.out) / f"{name}.ipynb"
    print(f"{name}: running ({'small' if args.small else 'default'} settings)", flush=True)
    start = time.perf_counter()
    try:
      execute_notebook(
        NOTEBOOKS_DIR / f"{name}.ipynb",
        out_path,
        small=args.small,
        runs_dir=args.runs_dir,
        timeout=args.timeout,
      )
    except NOTEBOOK_ERRORS as error:
      failed.append(name)
      print(f"{name}: FAILED after {time.perf_counter() - start:.0f} s\n{error}", flush=True)
    else:
      print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"{name}: executed copy {out_path}", flush=True)
  if failed:
    print(f"cell errors in: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
