"""Parity with google/flax examples/vae: 784-500-20 VAE on static binarized MNIST.

What: encoder Dense(500, ReLU) -> mean and log-variance of a 20-D Gaussian,
  decoder Dense(500, ReLU) -> 784 Bernoulli logits; Larochelle's fixed
  binarization (50,000 train / 10,000 test); Adam 1e-3, batch 128, 10 epochs.
Expected: eval/neg_elbo (test, nats per image, 1-sample ELBO) at or below the
  flax example's ~104 after 10 epochs; see docs/results.md.
Runtime: 250 s on a 2-core CPU (JAX 0.10.2; docs/results.md), 29 s on an H200.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/flax_vae_parity.py --workdir=runs/flax_vae_parity
"""

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny",))
  c = configs.default_config()
  c.data.name = "binarized_mnist"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.model.name = "dense_vae"
  c.model.latent_dim = 20
  c.model.hidden_widths = (500,)
  c.batch_size = 128
  c.num_epochs = 10
  c.eval_every_steps = 0  # Every epoch.
  if "tiny" in words:
    configs.make_tiny(c)
  return c
