"""The lesson's convolutional autoencoder on MNIST (4x4x8 = 128-d latent).

What: Conv(16)-Pool-Conv(8)-Pool-Conv(8)-Pool encoder, mirrored upsampling
  decoder (models.LessonConvEncoder/Decoder), per-pixel Bernoulli
  cross-entropy on grey levels, Adam 1e-3, batch 128, 25 epochs.
Expected: eval/bce_per_pixel at or below the lesson's 0.0953 (see
  docs/results.md for the measured value).
Runtime: about a minute on a GPU; tens of minutes on a 2-core CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/lesson_conv_ae.py --workdir=runs/lesson_conv_ae
"""

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny",))
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "lesson_conv_ae"
  c.model.latent_dim = 128  # 4 x 4 x 8, fixed by the architecture.
  c.batch_size = 128
  c.num_epochs = 25
  c.eval_every_steps = 0  # Every epoch.
  if "tiny" in words:
    configs.make_tiny(c)
  return c
