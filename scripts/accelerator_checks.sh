#!/usr/bin/env bash
# The accelerator measurements of docs/reproductions.md, in one run on one GPU or TPU host:
#
#   AEJAX_DATA_DIR=/path/to/data bash scripts/accelerator_checks.sh OUT_DIR
#
# 1. scripts/benchmark.py: the fused loop against one step per dispatch, float32 and bfloat16,
#    for Burda et al.'s MLP at batch 20 and 128 and Pythae's conv VAE at batch 128.
# 2. scripts/bench_multi_seed.py: a population of S = 1, 8, 32 seeds as one program against S
#    separate runs (what makes an ablation grid cheap).
# 3. The 5000-sample NLL of the 784-200-200-50 VAE on the 10,000 test images, timed.
# 4. scripts/reproduce.py --burda shortened to 20,000 steps per row (the full protocol is 9.84M
#    steps per row: run it with --steps=0 where hours are available), once row by row and once
#    as one padded population (--population), timed: what a shape-padded grid saves.
# 5. Kingma & Welling's latent sweep at full length (46,800 steps; 2, 3, 5, 10, 20, 50, 200
#    latents x 3 seeds) as one population of 21 (scripts/sweep.py --vmap_shapes).
# Every command's output lands in OUT_DIR (JSON lines, Markdown tables, logs).
set -euo pipefail
out="${1:?usage: accelerator_checks.sh OUT_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
python -c "import jax; print(jax.devices())" | tee "$out/devices.txt"

for dtype in float32 bfloat16; do
  for batch in 20 128; do
    python scripts/benchmark.py --case=iwae_mlp --batch_size="$batch" --dtype="$dtype" \
      >> "$out/benchmark.jsonl"
  done
  python scripts/benchmark.py --case=pythae_conv_vae --dtype="$dtype" >> "$out/benchmark.jsonl"
done
python scripts/benchmark.py --table="$out/benchmark.jsonl" > "$out/benchmark.md"

python scripts/bench_multi_seed.py --config=experiments/iwae_burda.py --seeds=1,8,32 \
  --steps=200 --reps=3 --out="$out/multi_seed.json" > "$out/multi_seed.md"

nll_run="$out/runs/nll"
python -m aejax.main --config=experiments/iwae_burda.py:vae,k1 --workdir="$nll_run" \
  --config.total_steps=2000 --config.progress_bar=False 2> "$out/nll_train.log"
/usr/bin/time -v python -m aejax.evaluate --workdir="$nll_run" --nll_samples=5000 --nofid \
  --probe_train_size=0 2> "$out/nll_evaluate.log"

python scripts/reproduce.py --burda --runs_dir="$out/runs" --seeds=0 --steps=20000 \
  > "$out/burda.log" 2>&1
cp "$out/runs/burda_results.md" "$out/"
python scripts/reproduce.py --burda --population --runs_dir="$out/runs_population" --seeds=0 \
  --steps=20000 > "$out/burda_population.log" 2>&1
cp "$out/runs_population/burda_results.md" "$out/burda_population_results.md"

python scripts/sweep.py --config=experiments/latent_sweep.py --sweep_dir="$out/runs/latent_sweep" \
  --seeds=0,1,2 --vmap_shapes --max_group=21 --nll_samples=5000 > "$out/latent_sweep.log" 2>&1
cp "$out/runs/latent_sweep/report.md" "$out/latent_sweep_report.md"
