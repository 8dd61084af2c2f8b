"""Dai & Wipf (2019), "Diagnosing and Enhancing VAE Models" (ICLR): the two-stage VAE on MNIST.

What: the first stage is a VAE with 64-D codes and a Gaussian decoder
  N(x; sigmoid(logits), gamma I) whose variance gamma is learned (one scalar,
  log std initialised to 0 as in the authors' code), on grey-level MNIST
  (60,000 train, 10,000 test); conv networks of two stride-2 convolutions with
  64 and 128 channels (the convolutions of the InfoGAN network the authors'
  MNIST code uses; the decoder mirrors them); Adam lr 1e-4, halved after 150
  and 300 epochs, batch 64, 400 epochs (the defaults of the authors' released
  code, github.com/daib13/TwoStageVAE, demo.py). The second stage is the
  sampler "two_stage" (aejax/samplers.py, aejax/zoo/two_stage_vae.py): a VAE
  of dense layers fitted after training to codes z ~ q(z|x) of 10,000
  training images, u ~ N(0, I) -> z -> the first decoder;
  `aejax.load(w).generate(n, sampler="two_stage")`, and `aejax.evaluate`
  reports its FID as fid_two_stage beside fid (z ~ N(0, I), the first stage
  alone).
  Differences from the paper: its InfoGAN encoder also has a 1024-unit dense
  layer, batch norm and spectral norm, and a softplus standard deviation;
  here aejax's conv networks and a log-variance. Its second stage is 3 dense
  layers of 1024 units trained for 800 epochs (Adam 1e-4, halved every 300
  epochs) on all 60,000 training codes; here 2 x 512 units, 3,000 Adam steps
  of 128 codes drawn from 10,000 training images (lr 3e-3 with a cosine
  decay), a fit of seconds on a CPU.
Arguments (comma-separated, e.g. `:cpu`):
  cpu   a short run: 3 epochs; NOT the reproduction, it checks the pipeline
        on a CPU;
  tiny  seconds, for tests (a second stage of 2 x 32 units, 200 steps).
Expected: the paper's Table 1 reports FID (Inception features, 10,000
  samples) on MNIST of about 12.6 +- 1.5 for the 2-Stage VAE against about
  52 to 55 for single-stage Gaussian VAEs with a fixed or learned gamma and
  16.6 for a cross-entropy VAE (recalled, UNVERIFIED: the table could not be
  checked here). aejax's FID uses its own MNIST classifier's features
  (aejax/fid.py), so the values are NOT comparable; only the ordering is:
  fid_two_stage should be well below fid (N(0, I) samples of the same model).
  Measured: only the `tiny` run.
Runtime: 375,000 steps (937 per epoch); unmeasured (no accelerator was
  available when this was written); `tiny` trains in seconds on a CPU; the
  second stage's fit takes tens of seconds on one CPU core once per
  checkpoint (cached in the workdir).
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/two_stage_vae.py --workdir=runs/two_stage_vae
  python -m aejax.evaluate --workdir=runs/two_stage_vae
"""

from aejax import configs

ARGS = ("cpu", "tiny")
NUM_TRAIN = 60_000
CPU_EPOCHS = 3


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "two_stage_vae"
  c.model.latent_dim = 64
  c.model.conv_channels = (64, 128)
  c.model.activation = "relu"
  c.model.likelihood = "gaussian"
  c.model.learn_log_scale = True
  c.model.log_scale = 0.0
  c.model.options.network = "conv"
  c.model.options.second_widths = (512, 512)
  c.model.options.second_steps = 3000
  c.model.options.second_learning_rate = 3e-3
  c.model.options.second_batch_size = 128
  c.model.options.second_max_codes = 10_000
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.batch_size = 64
  steps_per_epoch = NUM_TRAIN // c.batch_size
  c.optimizer.schedule = "piecewise"
  c.optimizer.piecewise_boundaries = (150 * steps_per_epoch, 300 * steps_per_epoch)
  c.optimizer.piecewise_scales = (0.5, 0.5)
  c.num_epochs = 400
  c.log_every_steps = steps_per_epoch // 10
  c.eval_every_steps = 20 * steps_per_epoch
  c.checkpoint_every_steps = 10 * steps_per_epoch
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.num_epochs = CPU_EPOCHS
    c.eval_every_steps = c.checkpoint_every_steps = steps_per_epoch
  if "tiny" in words:
    configs.make_tiny(c)
    c.model.conv_channels = (8, 16)
    c.model.options.second_widths = (32, 32)
    c.model.options.second_steps = 200
    c.model.options.second_batch_size = 32
    c.model.options.second_max_codes = 256
  return c
