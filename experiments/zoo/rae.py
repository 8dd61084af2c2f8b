"""Ghosh et al. (2020), "From Variational to Deterministic Autoencoders" (ICLR): RAE on MNIST.

What: a regularised deterministic autoencoder with 16-D codes (the paper's
  MNIST latent size), dense ReLU networks 784-512-256-16 (the decoder mirrors
  them), MNIST grey levels (60,000 train, 10,000 test) with the Bernoulli
  cross-entropy as the reconstruction NLL (aejax's usual MNIST setting);
  loss = recon + beta * ||z||^2 / 2 + lambda * L_REG per image with beta
  0.01 and
  - l2 (default, RAE-L2): L_REG the squared L2 norm of the decoder's
    parameters, lambda 1e-4;
  - gp (RAE-GP): L_REG the squared Frobenius norm of d sigmoid(logits) / dz,
    lambda 1e-4;
  - plain (the paper's "RAE" row): lambda 0, the code penalty only;
  Adam lr 5e-4, batch 100, 100 epochs (the paper's MNIST optimisation).
  beta and lambda are the authors' released MNIST values (beta 1e-4 on
  mean_j z_j^2, lambda 1e-7) rescaled to aejax's losses, summed over the 784
  pixels (aejax/zoo/rae.py shows the arithmetic). After training, samples
  come from the ex-post 10-component full-covariance Gaussian mixture of the
  training codes (aejax/zoo/gmm.py): `aejax.load(w).generate(n,
  sampler="gmm")`, and `aejax.evaluate` reports their FID as fid_gmm.
  Differences from the paper: its MNIST networks are convolutional (4
  stride-2 4x4 convolutions of 128 to 1024 channels, batch norm) on 32x32
  padded images with an L2 reconstruction loss; here dense networks and the
  Bernoulli NLL; RAE-GP penalises the full Jacobian (the authors' code
  penalises the gradient of sum_p D(z)_p^2); the mixture is fitted to 10,000
  training codes.
Arguments (comma-separated, e.g. `:gp,cpu`):
  l2 | gp | plain  the decoder regulariser (default l2);
  cpu              a short run: 3 epochs; NOT the full run, it checks the
                   pipeline on a CPU;
  tiny             seconds, for tests.
Expected: the paper's Table 1, MNIST, FID of 10,000 samples of the ex-post
  GMM ("SAMPLES GMM" column; the same values are noted next to the authors'
  released configs): RAE-L2 8.69, RAE-GP 11.54, RAE (plain) 9.81, AE 10.66,
  VAE 17.66 (19.21 with N(0, I) samples), WAE 9.39. Those FIDs use Inception
  features on the authors' conv networks; aejax's FID uses its own MNIST
  classifier's features (aejax/fid.py), so the values are NOT comparable,
  only the ordering is meaningful: fid_gmm of RAE-L2 and RAE-GP should be
  well below fid (prior samples) of a VAE trained with the same network
  (`--config.model.name=dense_vae`), and close to its own reconstructions'
  FID. Measured: only the `tiny` run (below).
Runtime: 60,000 steps; unmeasured (no accelerator was available when this
  was written); `tiny` trains in seconds on a CPU; the mixture's fit takes
  seconds on a CPU once per checkpoint (cached in the workdir).
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/rae.py --workdir=runs/rae
  python -m aejax.evaluate --workdir=runs/rae
"""

from aejax import configs, errors

ARGS = ("l2", "gp", "plain", "cpu", "tiny")
NUM_TRAIN = 60_000
CPU_EPOCHS = 3


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  if len(words & {"l2", "gp", "plain"}) > 1:
    raise errors.ConfigError(f"config argument {arg!r}: choose one of l2/gp/plain")
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "rae"
  c.model.latent_dim = 16
  c.model.hidden_widths = (512, 256)
  c.model.activation = "relu"
  c.model.likelihood = "bernoulli"
  c.model.options.network = "dense"
  c.model.options.regulariser = "gp" if "gp" in words else "l2"
  c.model.options.decoder_weight = 0.0 if "plain" in words else 1e-4
  c.objective.beta = 0.01
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 5e-4
  c.batch_size = 100
  c.num_epochs = 100
  steps_per_epoch = NUM_TRAIN // c.batch_size
  c.log_every_steps = steps_per_epoch // 10
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = 10 * steps_per_epoch
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.num_epochs = CPU_EPOCHS
    c.eval_every_steps = c.checkpoint_every_steps = steps_per_epoch
  if "tiny" in words:
    configs.make_tiny(c)
  return c
