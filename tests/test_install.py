"""Installed or not, from any directory: pyproject.toml, configs by name, provenance."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from test_cli import ROOT, TINY
from vae_jax import main as main_lib


def test_pyproject_ships_the_package_and_the_configs_with_the_requirements():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)
  assert project['project']['dynamic'] == ['dependencies', 'optional-dependencies']
  dynamic = project['tool']['setuptools']['dynamic']
  assert dynamic['dependencies'] == {'file': ['requirements.txt']}
  assert dynamic['optional-dependencies'] == {'trackers': {'file': ['requirements-trackers.txt']}}
  assert set(project['tool']['setuptools']['packages']['find']['include']) == {
      'vae_jax', 'vae_jax.*', 'configs'}
  assert os.path.exists(os.path.join(ROOT, 'configs', '__init__.py'))


def test_shipped_configs_are_found_by_name_or_by_their_path_from_anywhere(tmp_path, monkeypatch):
  shipped = os.path.join(ROOT, 'configs')
  monkeypatch.chdir(tmp_path)
  assert main_lib.shipped_config('ladder') == os.path.join(shipped, 'ladder.py')
  assert main_lib.shipped_config('ladder.py:width=256') == os.path.join(shipped, 'ladder.py') + ':width=256'
  assert main_lib.shipped_config('configs/iwae.py:k=5') == os.path.join(shipped, 'iwae.py') + ':k=5'
  # A file of one's own, or a missing one elsewhere, is left for the loader (and its error).
  (tmp_path / 'ladder.py').write_text('')
  assert main_lib.shipped_config('ladder.py') == 'ladder.py'
  assert main_lib.shipped_config('mine/ladder.py') == 'mine/ladder.py'
  assert main_lib.shipped_config('no_such_config') == 'no_such_config'


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_the_configs(tmp_path):
  # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
  source = tmp_path / 'source'
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
      '.git', '.venv', 'build', '*.egg-info', '__pycache__', 'experiments', 'benchmarks'))
  out = tmp_path / 'wheel'
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(out),
                  str(source)], check=True, capture_output=True, timeout=300)
  (wheel,) = [out / name for name in os.listdir(out) if name.endswith('.whl')]
  names = zipfile.ZipFile(wheel).namelist()
  for path in ('vae_jax/main.py', 'vae_jax/models/__init__.py', 'configs/__init__.py',
               'configs/ladder.py', 'configs/quickstart.py'):
    assert path in names, path
  metadata = next(n for n in names if n.endswith('METADATA'))
  requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
              if line.startswith('Requires-Dist:')]
  assert any('jax>=0.10.2' in line for line in requires), requires


@pytest.mark.slow
def test_trains_from_another_directory_with_configs_by_name_and_of_ones_own(tmp_path):
  """As after `pip install -e .`: the checkout on the path, the command run elsewhere."""
  (tmp_path / 'mine.py').write_text(
      'from configs import quickstart\n\n'
      'def get_config(arg=None):\n'
      '  c = quickstart.get_config(arg)\n'
      '  c.model.latent_dim = 3\n'
      '  return c\n')
  env = dict(os.environ, PYTHONPATH=ROOT)
  for config, workdir, latent_dim in (('quickstart', 'by_name', 20), ('mine.py', 'own', 3)):
    overrides = [a for a in TINY if not a.startswith('--config.model.latent_dim')]
    result = _run([sys.executable, '-m', 'vae_jax.main', f'--config={config}',
                   f'--workdir={workdir}', '--config.train.num_steps=10'] + overrides,
                  cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / workdir / 'config.json').read_text())
    assert saved['model']['latent_dim'] == latent_dim and saved['data']['name'] == 'embedded_mnist'
    (launch,) = [json.loads(line) for line in
                 (tmp_path / workdir / 'launches.jsonl').read_text().splitlines()]
    assert launch['cwd'] == str(tmp_path) and f'--config={config}' in launch['argv']
    assert launch['devices'] == {'kind': 'cpu', 'count': 1}
    assert launch['host'] == os.uname().nodename
    if os.path.isdir(os.path.join(ROOT, '.git')):
      head = subprocess.run(['git', '-C', ROOT, 'rev-parse', 'HEAD'], capture_output=True,
                            text=True, check=True).stdout.strip()
      assert launch['git_commit'] == head and isinstance(launch['git_dirty'], bool)
    assert _noise(result.stderr) == [], result.stderr

  # The user's run evaluates, compares with the other and shows in TensorBoard,
  # from the same directory, with nothing on stderr but progress.
  evaluated = _run([sys.executable, '-m', 'vae_jax.evaluate_workdir', '--workdir=own',
                    '--num_samples=5', '--num_images=20'], cwd=tmp_path, env=env)
  assert evaluated.returncode == 0, evaluated.stderr
  assert _noise(evaluated.stderr) == [], evaluated.stderr
  assert 'log p(x) K=5' in evaluated.stdout
  compared = _run([sys.executable, '-m', 'vae_jax.compare', 'by_name', 'own',
                   '--output=curves.png'], cwd=tmp_path, env=env)
  assert compared.returncode == 0 and _noise(compared.stderr) == [], compared.stderr
  table = compared.stdout.splitlines()
  assert table[0].startswith('| run | model.latent_dim | final elbo | log p(x) (K=5) |'), table
  assert table[3].startswith('| own | 3 |') and (tmp_path / 'curves.png').exists(), table
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(tmp_path / 'own' / 'tensorboard'))
  events.Reload()
  assert 'eval/elbo' in events.Tags()['scalars'] and 'samples' in events.Tags()['images']


def _run(argv, **kwargs):
  """subprocess.run with the output decoded as is (text=True would turn \\r into \\n)."""
  result = subprocess.run(argv, capture_output=True, timeout=300, **kwargs)
  return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                     result.stderr.decode())


def _noise(stderr):
  """The lines of stderr that are not progress (a bar or a status line redrawn with \\r)."""
  return [line for line in stderr.split('\n')
          if line.strip() and '\r' not in line and not line.startswith('warning: ')]
