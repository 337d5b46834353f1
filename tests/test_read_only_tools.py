"""generate and evaluate_workdir check every flag, their output and the saved
config before they read a checkpoint or spend minutes evaluating."""

import math
import os
import subprocess
import sys

import pytest

from vae_jax import evaluate_workdir
from vae_jax import experiment
from vae_jax import generate
from vae_jax import workdir as workdir_lib

from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def saved_workdir(path, **overrides):
  """A workdir with a config.json (and nothing else: no checkpoint is ever reached)."""
  os.makedirs(path, exist_ok=True)
  config = tiny_config(**overrides).to_dict()
  workdir_lib.write_json(os.path.join(path, workdir_lib.CONFIG_FILE), config)
  return str(path)


@pytest.mark.parametrize('name,value', [('num_samples', 0), ('num_images', -3),
                                        ('batch_size', 0), ('chunk_size', -1)])
def test_evaluate_counts_are_refused_before_the_workdir_is_read(tmp_path, name, value):
  with pytest.raises(workdir_lib.FlagError, match=f'--{name}: must be'):
    evaluate_workdir.evaluate_workdir(str(tmp_path / 'nowhere'), **{name: value})


def test_evaluate_refuses_an_output_it_cannot_write_before_evaluating(tmp_path):
  workdir = saved_workdir(tmp_path / 'run')
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(workdir_lib.FlagError, match='--output: cannot write .*a_file'):
    evaluate_workdir.evaluate_workdir(workdir, output=str(tmp_path / 'a_file' / 'out.json'))
  # The default output in the workdir, not writable: the message names --output.
  os.makedirs(evaluate_workdir.output_path(workdir, 'test', 5000))
  with pytest.raises(workdir_lib.FlagError, match='pass --output=FILE'):
    evaluate_workdir.evaluate_workdir(workdir)


def test_evaluate_on_a_non_workdir_names_it_before_the_output(tmp_path):
  with pytest.raises(workdir_lib.WorkdirError, match='is .* a vae_jax workdir'):
    evaluate_workdir.evaluate_workdir(str(tmp_path))


GOOD = dict(temperatures=[1.0], num_samples=4, interpolate=[0, 1], traverse_dims=2)


@pytest.mark.parametrize('bad,match', [
    (dict(temperatures=[math.nan]), '--temperatures: each must be a finite number above 0'),
    (dict(temperatures=[0.5, 0.0]), '--temperatures'),
    (dict(temperatures=[math.inf]), '--temperatures'),
    (dict(group_temperatures=[1.0, -0.5]), '--group_temperatures'),
    (dict(group_temperatures=[math.nan]), '--group_temperatures'),
    (dict(num_samples=0), '--num_samples: must be 1 or more'),
    (dict(traverse_dims=0), '--traverse_dims'),
    (dict(interpolate=[3]), '--interpolate: two held-out image indices, got 1'),
])
def test_generate_flags_are_refused_before_the_workdir_is_read(tmp_path, bad, match):
  flags = dict(GOOD, **bad)
  with pytest.raises(workdir_lib.FlagError, match=match):
    generate.generate(str(tmp_path / 'nowhere'), str(tmp_path / 'out'), flags['temperatures'],
                      flags['num_samples'], [0], flags['interpolate'], 0,
                      flags['traverse_dims'], group_temperatures=flags.get('group_temperatures', ()))
  assert not os.path.exists(tmp_path / 'out')


def test_generate_temperature_zero_per_group_is_allowed():
  generate.check_flags([1.0], 4, [0, 1], 2, group_temperatures=[0.0, 1.0])


@pytest.mark.parametrize('reconstruct,interpolate,traverse,match', [
    ([0, 500], [0, 1], 0, '--reconstruct: the held-out split has 500 images .0 to 499., got 500'),
    ([0], [0, -1], 0, '--interpolate: .* got -1'),
    ([0], [0, 1], 731, '--traverse: .* got 731'),
    ([], [0, 1], 0, '--reconstruct: at least one'),
])
def test_generate_indices_must_be_in_the_split(reconstruct, interpolate, traverse, match):
  with pytest.raises(workdir_lib.FlagError, match=match):
    generate.check_indices(500, reconstruct, interpolate, traverse)
  generate.check_indices(500, [0, 499], [3, 4], 499)


def test_a_hand_edited_saved_config_is_one_error_naming_file_and_field(tmp_path):
  workdir = saved_workdir(tmp_path / 'run')
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  saved = workdir_lib.read_json(path)
  saved['model']['latent_dim'] = 'abc'
  workdir_lib.write_json(path, saved)
  with pytest.raises(workdir_lib.WorkdirError, match=r'config\.json: .*model\.latent_dim'):
    experiment.load_trained(workdir)


@pytest.mark.parametrize('flag,match', [
    ('--temperatures=nan', 'error: --temperatures: each must be a finite number above 0, got nan'),
    ('--reconstruct=0,x', 'error: --reconstruct: expected comma-separated integers, got 0,x'),
])
def test_generate_cli_bad_flag_is_one_line_and_writes_nothing(tmp_path, flag, match):
  workdir = saved_workdir(tmp_path / 'run')
  result = subprocess.run([sys.executable, '-m', 'vae_jax.generate', f'--workdir={workdir}', flag],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip() == match
  assert sorted(os.listdir(workdir)) == [workdir_lib.CONFIG_FILE]


def test_reading_a_workdir_leaves_its_checkpoints_untouched(tmp_path, caplog):
  """Leftovers of a save that crashed are the training run's to clean, not a reader's."""
  from vae_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(logging__tensorboard=False, train__num_steps=20), workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  leftover = os.path.join(checkpoints, '30.orbax-checkpoint-tmp-1234')
  os.makedirs(os.path.join(leftover, 'state'))

  def listing():
    return sorted((root, tuple(sorted(files)), os.path.getmtime(root))
                  for root, _, files in os.walk(checkpoints))
  before = listing()
  _, _, step = experiment.load_trained(workdir)
  evaluate_workdir.evaluate_workdir(workdir, 'test', num_samples=2, num_images=10,
                                    progress=False, output=str(tmp_path / 'out.json'))
  assert step == 20 and listing() == before and os.path.isdir(leftover)
  # orbax's warnings that it opened the directory read-only are not shown to the user.
  assert 'read only' not in caplog.text and 'read_only=True' not in caplog.text


@pytest.mark.parametrize('tool,other', [('generate', 'evaluate_workdir'),
                                        ('evaluate_workdir', 'generate')])
def test_the_tools_import_neither_the_training_loop_nor_each_other(tool, other):
  code = (f'import sys; import vae_jax.{tool}; '
          f'print(sorted(m for m in ("vae_jax.train", "vae_jax.{other}") if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]'
