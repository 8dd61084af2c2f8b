"""A model module that writes a file when imported: loading a workdir must not import it."""

import os
import pathlib

pathlib.Path(os.environ["AEJAX_TEST_MARK"]).write_text("imported\n")


def build(model_config, image_shape):
  raise AssertionError("never built: aejax must refuse before importing this module")
