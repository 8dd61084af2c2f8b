"""The lesson's dense VAE with a 2-D latent on MNIST: 784-512-2.

What: encoder Dense(512, ReLU) -> mean and log-variance of a 2-D Gaussian;
  decoder Dense(512, ReLU) -> 784. The lesson's loss is MSE*784 + KL with
  RMSprop; aejax uses a Gaussian decoder with fixed variance 1/2, whose
  reconstruction term is exactly sum((x - x_hat)^2) plus the constant
  784 * 0.5 * log(pi) = 448.7 nats, so eval/neg_elbo is a true bound, and
  the consistent log-variance KL (see aejax/losses.py).
Expected: eval/mse_per_pixel about 0.04; the lesson's 35.7 is not
  comparable (its KL used a standard deviation as if it were a variance).
Runtime: a few minutes on a CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/lesson_vae.py --workdir=runs/lesson_vae
"""

import math

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny",))
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "dense_vae"
  c.model.latent_dim = 2
  c.model.hidden_widths = (512,)
  c.model.likelihood = "gaussian"
  c.model.log_scale = 0.5 * math.log(0.5)  # sigma^2 = 1/2: NLL = squared error + const.
  c.optimizer.name = "rmsprop"
  c.optimizer.eps = 1e-7  # Keras' RMSprop default.
  c.batch_size = 128
  c.num_epochs = 50
  c.eval_every_steps = 468 * 5  # Every 5 epochs (468 steps per epoch).
  c.checkpoint_every_steps = 468 * 5
  if "tiny" in words:
    configs.make_tiny(c)
  return c
