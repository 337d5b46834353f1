"""The README's performance table from the JSON files of scripts/benchmarks.sh.

  python scripts/benchmark_table.py benchmarks/*.json

One markdown row per file, in the order given, with the issue's targets in the
header: training through the real loop as a fraction of the matmul roofline
measured in the same run, the loop against the bare hand-written step timed in
turns with it, compile times, log p(x) at K = 5,000 extrapolated to the 10,000
test images, peak memory, and the load average the run saw. A run with
--compare_seeds adds a line for vmapped seeds against separate runs.
"""

import json
import os
import sys


def row(name, r):
  t, cs, ll = r['train'], r['compile_s'], r['log_likelihood']
  c = r['config']
  load = r['machine']['loadavg_start'][0], r['machine']['loadavg_end'][0]
  return (
      f"| {name} | {c['model']['architecture']} | {c['train']['batch_size']} | "
      f"{c['train']['steps_per_call']} | {t['loop']['images_per_sec']:,.0f} | "
      f"{t['roofline_images_per_sec']:,.0f} | {100 * t['loop_fraction_of_roofline']:.0f}% | "
      f"{100 * t['bare_fraction_of_roofline']:.0f}% | {t['overhead_ratio']:.3f} | "
      f"{cs['train_step_s']:.1f} / {cs['log_likelihood_s']:.1f} | "
      f"{ll['minutes_for_10000_images']:.1f} | {r['memory']['peak_maxrss_mib']:,.0f} | "
      f"{load[0]:.1f}-{load[1]:.1f} |")


HEADER = [
    '| run | model | batch | steps/call | loop images/s | roofline images/s | loop % roofline '
    '(target 80% at 128, 90% at 1,024) | bare % roofline | loop / bare (target >= 0.95) | '
    'compile s: train step / log p(x) (target < 5) | log p(x) K=5,000, min per 10k images '
    '(target <= 4) | peak RSS MiB (target < 2,048) | load avg |',
    '|' + ' --- |' * 13,
]


def seeds_line(name, r):
  s = r['seeds']
  return (f"{name}: {s['num_seeds']} seeds vmapped {s['vmapped_images_per_sec']:,.0f} images/s "
          f"vs {s['separate_images_per_sec']:,.0f} for one seed at a time: "
          f"**{s['speedup']:.2f}x**; setup + first call {s['vmapped_setup_and_first_call_s']:.1f} s "
          f"once vs {s['separate_setup_and_first_call_s']:.1f} s per separate run.")


def input_line(name, r):
  i, t = r['input'], r['train']
  rows = ', '.join(f"{w} worker(s) {x['images_per_sec']:,.0f} images/s "
                   f"(**x{x['ratio_to_bare_step']:.2f}**)" for w, x in i['workers'].items())
  return (f"{name}: streaming input alone ({i['dataset']}, batch {i['batch_size']}, decoding "
          f"included): {rows}, against the bare step's {t['bare']['images_per_sec']:,.0f} "
          f"and the loop's {t['loop']['images_per_sec']:,.0f} images/s in the same run.")


def main(paths):
  results = []
  for path in paths:
    with open(path, encoding='utf-8') as f:
      results.append((os.path.splitext(os.path.basename(path))[0], json.load(f)))
  lines = HEADER + [row(name, r) for name, r in results]
  lines += ['', *(seeds_line(name, r) for name, r in results if 'seeds' in r)]
  lines += ['', *(input_line(name, r) for name, r in results if 'input' in r)]
  peaks = ', '.join(f"{r['matmul']['peak_gflops']:.0f}" for _, r in results)
  lines += ['', f'Matmul peak measured in each run (GFLOP/s): {peaks}.']
  print('\n'.join(lines))


if __name__ == '__main__':
  main(sys.argv[1:])
