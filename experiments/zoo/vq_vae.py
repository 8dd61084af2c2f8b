"""van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning": VQ-VAE.

What: a VQ-VAE on MNIST grey levels (60,000 train, 10,000 test) with the
  Bernoulli cross-entropy as the reconstruction cost (aejax's usual MNIST
  setting; nothing here is a likelihood bound that binarized data would make
  comparable to a published number, and grey levels keep the strokes' edges).
  The encoder is two 4x4 stride-2 convolutions (28x28 -> a 7x7 grid) of 64
  channels and two residual blocks, the decoder mirrors it (the paper's
  architecture at a quarter of its 256 channels); K = 512 codes (the paper's)
  of dimension D = 16: each code stands for a 4x4 cell of 16 pixels, and 16
  is the latent size of the zoo's other MNIST models. The codebook follows
  the codes by exponential moving averages (decay 0.99, the paper's appendix),
  initialised by 10 k-means iterations on the first batch, codes with an EMA
  cluster size below 1 moved to random encoder outputs of the batch;
  loss = recon + beta * commitment with beta 0.25 (the paper's), and a gated
  PixelCNN prior (8 layers of 64 channels) over the 7x7 code grid trained
  alongside on the codes of every batch. Adam lr 2e-4, batch 128, 250,000
  steps. The paper's values quoted here (K, beta, the EMA decay, the
  optimiser, the batch and its CIFAR-10 run's step count) are as we recall
  the paper; we could not check them against its text (unverified).
  Differences from the paper: narrower networks; no MNIST experiment in the
  paper; the EMA codebook (the main text trains the codebook with a loss); the
  k-means initialisation and dead-code reset; the prior is trained with the
  VQ-VAE instead of after it (aejax/zoo/vq_vae.py says why).
Arguments (comma-separated, e.g. `:cpu`):
  cpu   a short run: 2,000 steps; NOT the full run, it checks the pipeline
        on a CPU;
  tiny  seconds, for tests (a small codebook and networks).
Expected: the paper reports no MNIST numbers, so there is no published row to
  compare with (docs/zoo.md's table has none for vq_vae). What we expect
  (not measured): reconstructions close to the inputs, eval/bce_per_pixel
  below that of a continuous 16-D autoencoder (49 codes of 9 bits each carry
  more detail than 16 numbers do at this training length); eval/perplexity
  in the hundreds, eval/codes_used near 1 and eval/dead_codes near 0 (the
  reset keeps codes in use); eval/loss_prior falling as the codes settle,
  and samples from the prior that look like digits only once it has.
  Measured: only the `tiny` run.
Runtime: 250,000 steps; unmeasured (no accelerator was available when this
  was written), and `cpu` (2,000 steps) unmeasured too; `tiny` trains in
  seconds on a CPU (its test, with two restarts and an evaluation, about a
  minute, mostly compilation).
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/vq_vae.py --workdir=runs/vq_vae
  python -m aejax.evaluate --workdir=runs/vq_vae
"""

from aejax import configs

ARGS = ("cpu", "tiny")
NUM_TRAIN = 60_000
CPU_STEPS = 2_000


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "vq_vae"
  c.model.latent_dim = 16
  c.model.likelihood = "bernoulli"
  c.model.options.codebook_size = 512
  c.model.options.ema_decay = 0.99
  c.model.options.kmeans_iterations = 10
  c.model.options.dead_code_threshold = 1.0
  c.model.options.channels = 64
  c.model.options.residual_blocks = 2
  c.model.options.prior_channels = 64
  c.model.options.prior_layers = 8
  c.objective.beta = 0.25
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.batch_size = 128
  c.total_steps = 250_000
  c.log_every_steps = 500
  c.eval_every_steps = 25_000
  c.checkpoint_every_steps = 10_000
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.total_steps = CPU_STEPS
    c.eval_every_steps = c.checkpoint_every_steps = 1_000
    c.log_every_steps = 100
  if "tiny" in words:
    configs.make_tiny(c)
    c.model.latent_dim = 4
    c.model.options.codebook_size = 32
    c.model.options.channels = 16
    c.model.options.residual_blocks = 0
    c.model.options.prior_channels = 16
    c.model.options.prior_layers = 2
    # The same numbers as the CPU's default im2col convolutions, in a third less compile time:
    # a 16-step run is mostly compilation.
    c.model.conv_impl = "xla"
  return c
