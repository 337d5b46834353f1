#!/usr/bin/env bash
# The training loop's images/s in two checkouts, measured in one run, alternating.
#   TFDS_DATA_DIR=/path/to/tensorflow_datasets bash scripts/compare_loop_speed.sh OLD_TREE NEW_TREE [PAIRS] [BATCHES]
# e.g. `git worktree add /tmp/before HEAD~5` then `... compare_loop_speed.sh /tmp/before .`
#
# Each pair launches `python -m vae_jax.main --config=configs/benchmark.py` in OLD_TREE
# and in NEW_TREE (the same Python environment), at each batch size in BATCHES
# (default "128 1024"), PAIRS times (default 5). A run's speed is the median of its
# logged steps/s after the first interval (which holds the compilation); the
# summary gives each side's median over its runs and their ratio. Alternating
# makes the ratio survive a shared machine whose speed drifts; single runs vary
# by +-10% on 2 cores, so use 5 pairs or more for a 3% question. The order flips
# from pair to pair: the first run of a pair was ~3% faster than the second here,
# whichever tree it was.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OLD_TREE NEW_TREE [PAIRS] [BATCHES]" >&2; exit 2; }
for tree in "$1" "$2"; do
  [ -f "$tree/vae_jax/main.py" ] || { echo "error: $tree is not a vae_jax checkout" >&2; exit 2; }
done
old=$(realpath "$1"); new=$(realpath "$2"); pairs="${3:-5}"; batches="${4:-128 1024}"
out=$(mktemp -d /tmp/compare_loop_speed.XXXXXX)
export VAE_JAX_CACHE_DIR="$out/cache"
for batch in $batches; do
  # ~20-40 s of training per run; log intervals that are whole calls of 10 steps.
  steps=$(( 768000 / batch / 10 * 10 )); every=$(( steps / 12 / 10 * 10 ))
  for i in $(seq "$pairs"); do
    order="old new"; [ $(( i % 2 )) -eq 0 ] && order="new old"
    for side in $order; do
      tree=$old; [ "$side" = new ] && tree=$new
      (cd "$tree" && python -m vae_jax.main --config=configs/benchmark.py \
          --workdir="$out/$side.$batch.$i" --config.train.batch_size="$batch" \
          --config.train.num_steps="$steps" --config.train.log_every_steps="$every" \
          --config.train.eval_every_steps=1000000 > "$out/$side.$batch.$i.log" 2>&1) \
        || { echo "error: $tree failed; see $out/$side.$batch.$i.log" >&2; exit 1; }
    done
    echo "batch $batch: pair $i of $pairs done"
  done
done
python - "$out" "$pairs" $batches <<'EOF'
import json, statistics, sys
out, pairs, batches = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def images_per_sec(side, batch, i):
  with open(f'{out}/{side}.{batch}.{i}/metrics.jsonl') as f:
    rates = [r['steps_per_sec'] for r in map(json.loads, f) if r['split'] == 'train']
  return statistics.median(rates[1:]) * int(batch)
for batch in batches:
  old, new = ([images_per_sec(s, batch, i) for i in range(1, pairs + 1)] for s in ('old', 'new'))
  print(f'batch {batch}: old {statistics.median(old):,.0f} img/s {[round(x) for x in old]}; '
        f'new {statistics.median(new):,.0f} img/s {[round(x) for x in new]}; '
        f'new / old {statistics.median(new) / statistics.median(old):.3f}')
EOF
rm -rf "$out"
