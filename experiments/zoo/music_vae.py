"""Roberts et al. (2018), MusicVAE: melodies of the Bach chorales, 2 or 4 bars, one latent each.

What: MusicVAE (aejax/zoo/music_vae.py) on the soprano lines of the 352
  4/4 Bach chorales in music21's corpus (aejax/chorales.py: MusicVAE's melody
  tokens on sixteenth notes, windows of whole bars starting at bar lines,
  split by chorale into 317 train and 35 test chorales, the training windows
  in 12 transpositions, -5..+6 semitones). A bidirectional LSTM encoder to a
  Gaussian latent, the hierarchical ("conductor") decoder, a categorical
  likelihood per step, the KL annealed in over the first 5,000 steps and
  free bits. After training the CLI writes piano rolls, MIDI files, audio
  (FluidSynth) and an interpolation sheet (aejax/melodies.py); aejax.evaluate
  reports the NLL per sequence, token accuracy and the prior samples'
  pitch-class and note-length distances from the test melodies.
  Differences from MusicVAE: one-layer LSTMs of 512 units (MusicVAE: stacked,
  2048 in the encoder), latent 256 (MusicVAE: 512), a linear KL warm-up, free
  bits 48 (MusicVAE's 2-bar melody model as we recall it: unchecked), no
  scheduled sampling; chorale soprano lines, not MusicVAE's 1.5M MIDI files.
Arguments (comma-separated, e.g. `:4bar,flat`):
  2bar | 4bar   window length (default 2bar: 32 steps);
  flat          the flat-decoder baseline (one LSTM over all steps);
  cpu           a short run on a CPU: 128-unit LSTMs, latent 32, 3,000 steps;
  tiny          seconds, for tests (small LSTMs, a few hundred windows).
Expected: no published number on these data (MusicVAE trained on its own
  corpus). What MusicVAE shows and this should: reconstructions that keep
  most tokens, samples with chorale-like pitch classes and note lengths, and
  latent interpolations that move smoothly from one phrase to the other where
  token-space mixing jumps. Measured: docs/sequences.md.
Runtime: :cpu measured in docs/sequences.md; the full run is meant for an
  accelerator (50 epochs, 19,000 steps at batch 128 for 2 bars).
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/music_vae.py:2bar,cpu --workdir=runs/music_vae_2bar_cpu
  python -m aejax.evaluate --workdir=runs/music_vae_2bar_cpu --nll_samples=500
  Latent sizes, with the sweep command: python scripts/sweep.py \
    --config=experiments/zoo/music_vae.py:2bar,cpu --sweep_dir=runs/music_sweep \
    --latent_dims=8,32,128
"""

from aejax import configs, errors

ARGS = ("2bar", "4bar", "flat", "cpu", "tiny")


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  if {"2bar", "4bar"} <= words:
    raise errors.ConfigError(f"config argument {arg!r}: choose one of 2bar and 4bar")
  c = configs.default_config()
  c.data.name = "bach_soprano_4bar" if "4bar" in words else "bach_soprano_2bar"
  c.model.name = "music_vae"
  c.model.latent_dim = 256
  c.model.options.decoder = "flat" if "flat" in words else "hierarchical"
  c.model.options.encoder_units = 512
  c.model.options.conductor_units = 512
  c.model.options.decoder_units = 512
  c.model.options.free_bits = 48.0
  c.objective.kl_warmup_steps = 5000
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 50
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  c.eval_batch_size = 256
  if "cpu" in words:
    c.model.latent_dim = 32
    c.model.options.encoder_units = 128
    c.model.options.conductor_units = 128
    c.model.options.decoder_units = 128
    c.objective.kl_warmup_steps = 1000
    c.total_steps = 3000
    c.eval_every_steps = c.checkpoint_every_steps = 1000
  if "tiny" in words:
    c.model.latent_dim = 4
    c.model.options.encoder_units = 16
    c.model.options.conductor_units = 16
    c.model.options.decoder_units = 16
    c.model.options.free_bits = 0.0
    c.objective.kl_warmup_steps = 0
    configs.make_tiny(c)
    c.eval_every_steps = c.total_steps
  return c
