#!/usr/bin/env bash
# The README's performance table: every row, one benchmark process each, in turn.
#   TFDS_DATA_DIR=/path/to/tensorflow_datasets bash scripts/benchmarks.sh [OUT_DIR]
# Each run writes OUT_DIR/<row>.json (default benchmarks/) and prints its
# headline lines; scripts/benchmark_table.py turns the JSON files into the table.
set -euo pipefail
out="${1:-benchmarks}"
mkdir -p "$out"
run() {
  local name="$1"; shift
  echo "== $name: python -m scripts.benchmark $*"
  python -m scripts.benchmark "$@" --output="$out/$name.json"
}
run mlp_b128_spc10 --config=configs/benchmark.py --compare_seeds=8
# XLA's own YNNPACK fusions, which exact_replicas=False is about (vae_jax restricts them on
# the jaxlib versions that miscompile some; see the README).
VAE_JAX_KEEP_XLA_DEFAULTS=1 run mlp_b128_spc10_inexact --config=configs/benchmark.py --config.train.exact_replicas=False
run mlp_b128_spc50 --config=configs/benchmark.py --config.train.steps_per_call=50
run mlp_b1024_spc10 --config=configs/benchmark.py --config.train.batch_size=1024
run conv_b128_spc10 --config=configs/benchmark.py:conv --ll_num_images=20
# The streaming input path alone (grain, 0 / 1 / 2 workers) beside the steps it feeds.
run input_mlp_b128 --config=configs/benchmark.py --input_workers=0,1,2 --startup=false
run input_conv_b128 --config=configs/benchmark.py:conv --ll_num_images=20 --input_workers=0,1,2 --startup=false
run input_ladder_b100 --config=configs/ladder.py:width=256,hidden=128 --ll_num_images=10 --input_workers=0,1,2 --startup=false
