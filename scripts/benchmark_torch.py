"""The cases of scripts/benchmark.py in PyTorch (and Pythae), one JSON line per case and framework.

  AEJAX_DATA_DIR=/path/to/data python scripts/benchmark_torch.py --case=pythae_conv_vae

Needs PyTorch (`pip install torch`), which aejax itself does not depend on;
Pythae's own VAE (framework "pythae") is measured too where `pip install
pythae` has been done. The same architectures, batch sizes, losses (Bernoulli
decoder on logits, analytic KL) and Adam as the JAX side; training is a
hand-written loop over tensors made once in memory (no DataLoader: the MNIST
split is one float tensor, each epoch a fresh permutation, each step an index
into it, as aejax cuts batches on device). `torch.set_num_threads` is the
number of CPU cores. Throughputs are medians of `--reps` repetitions after
warm-up steps; eager PyTorch compiles nothing (compile_seconds 0).
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {"lesson_conv_ae": (128,), "iwae_mlp": (20, 128), "pythae_conv_vae": (128,)}
EVAL_IMAGES = {"lesson_conv_ae": 10_000, "iwae_mlp": 10_000, "pythae_conv_vae": 1_000}
NLL_SAMPLES, NLL_IMAGES, NLL_CHUNK = 5000, 100, 128

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
except ImportError:
  sys.exit(
    "scripts/benchmark_torch.py needs PyTorch, which aejax does not depend on: "
    "pip install torch (CPU build: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu)"
  )


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", default="all", help=f"all or one of {', '.join(CASES)}")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the case's default(s)")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--seconds_per_rep", type=float, default=4.0)
  parser.add_argument("--quick", action="store_true")
  # Accepted for the same command line as benchmark.py; PyTorch runs float32 eager either way.
  parser.add_argument("--dtype", default="float32", choices=("float32",))
  parser.add_argument("--conv_impl", default="auto")
  parser.add_argument("--no_plain", action="store_true")
  parser.add_argument("--frameworks", default="torch,pythae", help="torch and/or pythae")
  parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: the CPU cores")
  args = parser.parse_args(argv)
  if args.case != "all" and args.case not in CASES:
    parser.error(f"--case: unknown case {args.case!r}; valid: all, {', '.join(CASES)}")
  if args.quick:
    args.reps, args.seconds_per_rep = 2, 0.2
  return args


# ---------------------------------------------------------------------------
# The architectures (NCHW, PyTorch's layout), each as aejax builds it.


class LessonConvAE(nn.Module):
  """networks.LessonConvEncoder/Decoder: 28x28x1 -> 4x4x8 -> 28x28 logits."""

  def __init__(self):
    super().__init__()
    conv = lambda cin, cout, pad=1: nn.Conv2d(cin, cout, 3, padding=pad)  # noqa: E731
    self.enc = nn.ModuleList([conv(1, 16), conv(16, 8), conv(8, 8)])
    self.dec = nn.ModuleList([conv(8, 8), conv(8, 8), conv(8, 16, pad=0), conv(16, 1)])

  def forward(self, x):
    h = x
    for layer in self.enc:
      # Keras' "same" pooling of 7 -> 4 is ceil_mode.
      h = F.max_pool2d(F.relu(layer(h)), 2, ceil_mode=True)
    z = h.flatten(1)
    h = z.view(-1, 8, 4, 4)
    for layer in self.dec[:3]:
      h = F.interpolate(F.relu(layer(h)), scale_factor=2, mode="nearest")
    return {"logits": self.dec[3](h)}


class MlpVAE(nn.Module):
  """Burda et al.'s 784-200-200-50 tanh VAE (networks.DenseEncoder/Decoder)."""

  def __init__(self, widths=(200, 200), latent=50):
    super().__init__()
    dims = [784, *widths]
    self.enc = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)])
    self.enc_out = nn.Linear(dims[-1], 2 * latent)
    rdims = [latent, *reversed(widths)]
    self.dec = nn.ModuleList([nn.Linear(a, b) for a, b in zip(rdims[:-1], rdims[1:], strict=True)])
    self.dec_out = nn.Linear(rdims[-1], 784)

  def encode(self, x):
    h = x.flatten(1)
    for layer in self.enc:
      h = torch.tanh(layer(h))
    return self.enc_out(h).chunk(2, dim=-1)

  def decode(self, z):
    h = z
    for layer in self.dec:
      h = torch.tanh(layer(h))
    return self.dec_out(h).view(-1, 1, 28, 28)

  def forward(self, x):
    mean, logvar = self.encode(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    return {"logits": self.decode(z), "mean": mean, "logvar": logvar}


class PythaeConvVAE(nn.Module):
  """Pythae's Encoder_Conv_VAE_MNIST + Decoder_Conv_AE_MNIST, written out (17,232,033 params)."""

  def __init__(self, latent=16):
    super().__init__()
    blocks = []
    for cin, cout in ((1, 128), (128, 256), (256, 512), (512, 1024)):
      blocks += [nn.Conv2d(cin, cout, 4, 2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    self.enc = nn.Sequential(*blocks)
    self.mean = nn.Linear(1024, latent)
    self.logvar = nn.Linear(1024, latent)
    self.fc = nn.Linear(latent, 1024 * 4 * 4)
    self.dec = nn.Sequential(
      nn.ConvTranspose2d(1024, 512, 3, 2, padding=1),
      nn.BatchNorm2d(512),
      nn.ReLU(),
      nn.ConvTranspose2d(512, 256, 3, 2, padding=1, output_padding=1),
      nn.BatchNorm2d(256),
      nn.ReLU(),
      nn.ConvTranspose2d(256, 1, 3, 2, padding=1, output_padding=1),
    )

  def forward(self, x):
    h = self.enc(x).flatten(1)
    mean, logvar = self.mean(h), self.logvar(h)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    logits = self.dec(self.fc(z).view(-1, 1024, 4, 4))
    return {"logits": logits, "mean": mean, "logvar": logvar}


def _loss(out, target):
  """Mean over the batch of the per-image Bernoulli NLL (+ analytic KL for a VAE), as aejax."""
  recon = F.binary_cross_entropy_with_logits(out["logits"], target, reduction="none")
  loss = recon.flatten(1).sum(-1)
  if "mean" in out:
    mean, logvar = out["mean"], out["logvar"]
    loss = loss + 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(-1)
  return loss.mean()


def _pythae_model(name: str):
  """Pythae's own VAE class (its loss and plumbing) with its MNIST benchmark nets or the MLP."""
  from pythae.models import VAE, VAEConfig
  from pythae.models.base.base_utils import ModelOutput
  from pythae.models.nn import BaseDecoder, BaseEncoder

  config = VAEConfig(
    input_dim=(1, 28, 28),
    latent_dim=16 if name == "pythae_conv_vae" else 50,
    reconstruction_loss="bce",
  )
  if name == "pythae_conv_vae":
    from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_VAE_MNIST

    return VAE(config, Encoder_Conv_VAE_MNIST(config), Decoder_Conv_AE_MNIST(config))
  mlp = MlpVAE()

  class Encoder(BaseEncoder):
    def __init__(self):
      BaseEncoder.__init__(self)
      self.enc, self.enc_out = mlp.enc, mlp.enc_out

    def forward(self, x):
      mean, logvar = MlpVAE.encode(self, x)
      return ModelOutput(embedding=mean, log_covariance=logvar)

  class Decoder(BaseDecoder):
    def __init__(self):
      BaseDecoder.__init__(self)
      self.dec, self.dec_out = mlp.dec, mlp.dec_out

    def forward(self, z):
      # Pythae's "bce" loss takes probabilities.
      return ModelOutput(reconstruction=torch.sigmoid(MlpVAE.decode(self, z)))

  return VAE(config, Encoder(), Decoder())


def _load_mnist(split: str, limit: int | None = None) -> torch.Tensor:
  from aejax import data

  images = data.load("mnist", split, limit=limit).images  # (N, 28, 28, 1) float32 in [0, 1].
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
  return sum(os.times()[:2])


def _timed(fn, reps: int) -> tuple[float, float]:
  """Medians of (wall seconds, process CPU seconds) of `reps` calls of fn."""
  walls, cpus = [], []
  for _ in range(reps):
    start, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    walls.append(time.perf_counter() - start)
    cpus.append(_cpu_seconds() - cpu)
  return statistics.median(walls), statistics.median(cpus)


def matmul_gflops(reps: int = 5, n: int = 2048) -> tuple[float, float]:
  a, b = torch.randn(n, n), torch.randn(n, n)
  a @ b
  wall, cpu = _timed(lambda: a @ b, reps)
  return 2 * n**3 / wall / 1e9, 2 * n**3 / max(cpu, 1e-3) / 1e9


def run_case(name: str, batch_size: int, framework: str, args) -> dict:
  load_start = os.getloadavg()[0]
  gflops, gflops_cpu = matmul_gflops()
  torch.manual_seed(0)
  train_x = _load_mnist("train")
  eval_x = _load_mnist("test", 256 if args.quick else EVAL_IMAGES[name])
  binarize = name == "iwae_mlp"  # Dynamic binarization, as experiments/iwae_burda.py.
  if framework == "pythae":
    model = _pythae_model(name)
    model.train()

    def loss_fn(x):
      return model({"data": x}).loss
  else:
    model = {"lesson_conv_ae": LessonConvAE, "iwae_mlp": MlpVAE, "pythae_conv_vae": PythaeConvVAE}[
      name
    ]()

    def loss_fn(x):
      return _loss(model(x), x)

  # As the aejax configs: Adam 1e-3 (eps 1e-4 for Burda et al.'s MLP, 1e-8 otherwise).
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4 if binarize else 1e-8)
  num_train = len(train_x)
  steps_per_epoch = num_train // batch_size
  state = {"step": 0, "perm": None}

  def train_steps(num_steps):
    for _ in range(num_steps):
      s = state["step"]
      if s % steps_per_epoch == 0 or state["perm"] is None:
        state["perm"] = torch.randperm(num_train)
      idx = state["perm"][
        (s % steps_per_epoch) * batch_size : (s % steps_per_epoch + 1) * batch_size
      ]
      x = train_x[idx]
      if binarize:
        x = torch.bernoulli(x)
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(x)
      loss.backward()
      optimizer.step()
      state["step"] += 1
    return loss.item()

  start = time.perf_counter()
  train_steps(1)
  first_step_seconds = time.perf_counter() - start
  train_steps(1)
  start = time.perf_counter()
  train_steps(2)
  per_step = (time.perf_counter() - start) / 2
  steps = int(min(20_000, max(3, round(args.seconds_per_rep / per_step))))
  wall, cpu = _timed(lambda: train_steps(steps), args.reps)
  train_ips, train_ips_cpu = steps * batch_size / wall, steps * batch_size / max(cpu, 1e-3)

  # Evaluation: the per-image loss terms over the test images, no gradients, batches of 1000.
  model.eval()
  eval_bs = 500 if name == "pythae_conv_vae" else 1000

  @torch.inference_mode()
  def evaluate():
    total = 0.0
    for i in range(0, len(eval_x), eval_bs):
      x = eval_x[i : i + eval_bs]
      if binarize:
        x = torch.bernoulli(x)
      total += float(loss_fn(x)) * len(x)
    return total

  evaluate()
  record = {"eval_images_per_sec": len(eval_x) / _timed(evaluate, max(2, args.reps - 2))[0]}

  if name == "iwae_mlp" and framework == "torch":
    num_samples, nll_images = (50, 8) if args.quick else (NLL_SAMPLES, NLL_IMAGES)

    @torch.inference_mode()
    def nll(x):
      """-L_k by a running log-sum-exp over chunks of samples, as evaluate.iwae_bounds."""
      x = torch.bernoulli(x)
      mean, logvar = model.encode(x)
      std = torch.exp(0.5 * logvar)
      running = torch.full((len(x),), -float("inf"))
      for start_k in range(0, num_samples, NLL_CHUNK):
        c = min(NLL_CHUNK, num_samples - start_k)
        eps = torch.randn(c, *mean.shape)
        z = mean + std * eps
        logits = model.decode(z.reshape(-1, mean.shape[1])).view(c, len(x), -1)
        log_px = -F.binary_cross_entropy_with_logits(
          logits, x.flatten(1).expand(c, -1, -1), reduction="none"
        ).sum(-1)
        log_w = log_px + (0.5 * eps.square() + 0.5 * logvar - 0.5 * z.square()).sum(-1)
        running = torch.logaddexp(running, torch.logsumexp(log_w, 0))
      return -(running - torch.log(torch.tensor(float(num_samples))))

    x = eval_x[:nll_images]
    nll(x)
    record["nll_samples"] = num_samples
    record["nll_images_per_sec"] = nll_images / _timed(lambda: nll(x), max(2, args.reps - 3))[0]

  return {
    "case": name,
    "framework": framework,
    "batch_size": batch_size,
    "train_images_per_sec": train_ips,
    "steps_per_rep": steps,
    "reps": args.reps,
    "compile_seconds": 0.0,
    "first_step_seconds": first_step_seconds,
    **record,
    "matmul_gflops": gflops,
    "train_images_per_cpu_sec": train_ips_cpu,
    "matmul_gflops_per_cpu_sec": gflops_cpu,
    "peak_memory_mb": _peak_rss_mb(),
    "peak_memory_kind": "process max RSS",
    "device": "cpu",
    "device_kind": "cpu",
    "device_count": 1,
    "num_threads": torch.get_num_threads(),
    "num_params": sum(p.numel() for p in model.parameters()),
    "data": "pre-made tensors, no DataLoader",
    "torch_version": torch.__version__,
    "load_avg_start": load_start,
    "load_avg_end": os.getloadavg()[0],
  }


def main(argv=None) -> int:
  args = _parse_args(argv)
  torch.set_num_threads(args.threads or os.cpu_count())
  names = list(CASES) if args.case == "all" else [args.case]
  frameworks = [f for f in args.frameworks.split(",") if f]
  for name in names:
    for batch_size in (args.batch_size,) if args.batch_size else CASES[name]:
      for framework in frameworks:
        if framework == "pythae":
          if name == "lesson_conv_ae":
            continue  # Pythae has no such model; its AE class would add nothing to compare.
          try:
            import pythae  # noqa: F401
          except ImportError:
            print(f"pythae not installed: no Pythae line for {name}", file=sys.stderr)
            continue
        print(json.dumps(run_case(name, batch_size, framework, args)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
