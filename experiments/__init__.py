"""aejax's experiment configs, one file per experiment (each docstring: what, expected, runtime,
command).

In a clone they are the files in experiments/; an installed aejax carries them as the
package `aejax.experiments`, so `--config=experiments/NAME.py[:ARG]` finds them from any folder
(a file of that name in the working folder comes first).
"""
