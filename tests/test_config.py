"""Config validation: each bad value fails fast and names its field."""

import importlib.util
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from vae_jax import config as config_lib
from vae_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_file(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize('name', sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                                         if f.endswith('.py') and not f.startswith('_')))
def test_every_config_file_validates(name):
  config_lib.validate(load_config_file(name), num_devices=1)


BAD_VALUES = [
    ('model.latent_dim', 0), ('model.latent_dim', -3), ('model.hidden', (400, 0)),
    ('optimizer.learning_rate', -1e-3), ('optimizer.learning_rate', float('nan')),
    ('data.name', 'imagenet'), ('model.likelihood', 'poisson'), ('model.architecture', 'resnet'),
    ('optimizer.name', 'lion'), ('objective.name', 'vq'), ('train.batch_size', 0),
    ('train.steps_per_call', 0), ('objective.beta', -1.0), ('objective.num_samples', 0),
    ('train.log_every_steps', 7), ('sampling.temperature', 0.0), ('train.nan_policy', 'ignore'),
    ('optimizer.b2', 1.0), ('eval.num_importance_samples', -1), ('model.activation', 'sigmoid'),
    ('objective.num_samples', 5),
]


@pytest.mark.parametrize('field,value', [('objective.beta', 2.0), ('objective.free_bits', 0.5),
                                         ('objective.kl_warmup_steps', 100)])
def test_iwae_rejects_elbo_only_settings(field, value):
  c = config_lib.default_config()
  c.objective.name, c.objective.num_samples = 'iwae', 5
  section, name = field.split('.')
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}'):
    config_lib.validate(c, num_devices=1)
  c[section][name] = config_lib.default_config()[section][name]
  config_lib.validate(c, num_devices=1)


def test_num_steps_beside_num_epochs_is_refused():
  c = config_lib.default_config()
  c.train.num_epochs, c.train.num_steps = 10.0, 500
  with pytest.raises(config_lib.ConfigError,
                     match='config.train.num_steps: 500 would be ignored: train.num_epochs=10.0'):
    config_lib.validate(c, num_devices=1)
  c.train.num_epochs = 0.0
  config_lib.validate(c, num_devices=1)


@pytest.mark.parametrize('field,value', BAD_VALUES)
def test_bad_value_names_the_field(field, value):
  c = config_lib.default_config()
  section, name = field.split('.')
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}'):
    config_lib.validate(c, num_devices=1)


def test_batch_must_divide_device_count():
  c = config_lib.default_config()
  c.train.batch_size = 100
  with pytest.raises(config_lib.ConfigError, match='train.batch_size.*8 devices'):
    config_lib.validate(c, num_devices=8)


def test_bernoulli_needs_binary_data():
  c = config_lib.default_config()
  c.data.binarization = 'none'
  with pytest.raises(config_lib.ConfigError, match='model.likelihood'):
    config_lib.validate(c, num_devices=1)


def test_differing_fields_ignore_run_length_and_reporting():
  old = config_lib.default_config().to_dict()
  new = config_lib.default_config()
  new.train.num_steps = 99
  new.eval.batch_size = 10
  assert config_lib.differing_fields(old, new.to_dict()) == []
  new.model.latent_dim = 50
  new.model.hidden = (500, 500)
  assert config_lib.differing_fields(old, new.to_dict()) == [
      'model.hidden: [400] -> [500, 500]', 'model.latent_dim: 20 -> 50']


@pytest.mark.parametrize('override,field', [
    ('--config.model.latent_dim=0', 'model.latent_dim'),
    ('--config.optimizer.learning_rate=-0.1', 'optimizer.learning_rate'),
    ('--config.data.name=nope', 'data.name'),
])
def test_cli_rejects_bad_value_before_creating_workdir(tmp_path, override, field):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'vae_jax.main', '--config=configs/quickstart.py',
       f'--workdir={workdir}', override],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert f'config.{field}' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


@pytest.mark.parametrize('overrides,misspelt', [
    (['--config.model.latnet_dim=5'], '--config.model.latnet_dim=5'),
    # Beside a valid flag of a similar name: the misspelt one is blamed.
    (['--config.train.num_step=3', '--config.train.num_steps=300'], '--config.train.num_step=3'),
    (['--config.train.num_steps=300', '--config.train.num_step=3'], '--config.train.num_step=3'),
])
def test_cli_rejects_misspelt_field(tmp_path, overrides, misspelt):
  result = subprocess.run(
      [sys.executable, '-m', 'vae_jax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path / "run"}', *overrides],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert result.stderr.startswith(f'error: {misspelt}: config has no field')
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('name,binarization', [('binarized_mnist', 'dynamic'), ('cifar10', 'static')])
def test_dataset_binarization_combination_is_checked(name, binarization):
  c = config_lib.default_config()
  c.data.name, c.data.binarization = name, binarization
  with pytest.raises(config_lib.ConfigError, match='config.data.binarization'):
    config_lib.validate(c, num_devices=1)


@pytest.mark.parametrize('arg', [None, 'objective=elbo,k=1', 'objective=iwae,k=50,epochs=20',
                                 'schedule=paper', 'runlocal'])
def test_iwae_config_variants_validate(arg):
  c = load_config_file('iwae', arg)
  config_lib.validate(c, num_devices=1)
  assert tuple(c.model.hidden) == (200, 200) and c.model.latent_dim == 50
  assert c.train.batch_size == 20 and c.optimizer.eps == 1e-4


def test_iwae_config_paper_schedule_and_bad_options():
  c = load_config_file('iwae', 'objective=iwae,k=5,schedule=paper')
  assert (c.train.num_epochs, c.optimizer.schedule, c.objective.num_samples) == (3280, 'burda', 5)
  with pytest.raises(config_lib.ConfigError, match="configs/iwae.py: unknown option 'kk'"):
    load_config_file('iwae', 'kk=5')
  with pytest.raises(config_lib.ConfigError, match=r"layers='3' is not one of \(1, 2\)"):
    load_config_file('iwae', 'layers=3')


def test_config_file_options_are_typed_and_checked():
  options = config_lib.parse_options('k=50,epochs=2.5,name=x,fast', 'f.py',
                                     {'k': 5, 'epochs': 10.0, 'name': 'a', 'warmup': 0.0},
                                     ('fast', 'slow'))
  assert options == {'k': 50, 'epochs': 2.5, 'name': 'x', 'warmup': 0.0, 'fast': True,
                     'slow': False}
  assert config_lib.parse_options(None, 'f.py', {'k': 5}) == {'k': 5}
  assert config_lib.parse_options('k=1e2', 'f.py', {'k': 5}) == {'k': 100}
  assert config_lib.parse_options('g=8-4-2', 'f.py', {'g': (1,)}) == {'g': (8, 4, 2)}
  with pytest.raises(config_lib.ConfigError, match="g='8-x' is not a '-'-separated list"):
    config_lib.parse_options('g=8-x', 'f.py', {'g': (1,)})
  for arg, match in [('j=1', "f.py: unknown option 'j'; known: k, fast"),
                     ('k', "option 'k' needs a value"), ('fast=1', "'fast' takes no value"),
                     ('k=2.5', "k='2.5' is not an integer"), ('k=x', 'is not an integer'),
                     ('k=3', r"k='3' is not one of \(1, 2, 5\)")]:
    with pytest.raises(config_lib.ConfigError, match=match):
      config_lib.parse_options(arg, 'f.py', {'k': 5}, ('fast',), choices={'k': (1, 2, 5)})
  with pytest.raises(config_lib.ConfigError, match="epochs='nan' is not a finite number"):
    config_lib.parse_options('epochs=nan', 'f.py', {'epochs': 1.0})
  # Every config file with options reads them this way: a misspelt one is an error.
  for name, arg in [('binarized_mnist', 'runlcal'), ('benchmark', 'cnv'), ('vampprior', 'prio=x'),
                    ('kingma_welling', 'latent=x')]:
    with pytest.raises(config_lib.ConfigError, match=f'configs/{name}.py: '):
      load_config_file(name, arg)


@pytest.mark.parametrize('args,message', [
    (['--config=configs/iwae.py:kk=5'], "error: configs/iwae.py: unknown option 'kk'"),
    (['--config=configs/nope.py'], "error: --config: [Errno 2] No such file or directory"),
    (['--config=configs/quickstart.py', '--workdirr=x'], "error: Unknown command line flag"),
    (['--config={bad}'], 'bad_config.py:2: ZeroDivisionError: division by zero'),
    (['--config={not_a_config}'], 'not_a_config.py: the config is a dict, not an '
     'ml_collections.ConfigDict'),
])
def test_cli_bad_config_file_or_flag_is_one_line(args, message, tmp_path):
  bad = tmp_path / 'bad_config.py'
  bad.write_text('def get_config(arg=None):\n  return 1 / 0\n')
  not_a_config = tmp_path / 'not_a_config.py'
  not_a_config.write_text('def get_config(arg=None):\n  return {"seed": 0}\n')
  args = [a.format(bad=bad, not_a_config=not_a_config) for a in args]
  result = subprocess.run([sys.executable, '-m', 'vae_jax.main', f'--workdir={tmp_path / "run"}',
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # One line.
  assert message in result.stderr
  assert not (tmp_path / 'run').exists()


def test_a_config_that_is_not_a_config_dict_or_lacks_fields_names_what():
  with pytest.raises(config_lib.ConfigError, match='the config is a dict, not an ml_collections'):
    config_lib.validate({'seed': 0})
  with pytest.raises(config_lib.ConfigError, match=r'config\.data\.name: missing'):
    config_lib.validate(ml_collections.ConfigDict({'seed': 0}))


def test_config_reference_is_generated_from_the_fields_and_current():
  """docs/config.md is `python -m vae_jax.config`'s output for the fields of today."""
  path = os.path.join(os.path.dirname(__file__), '..', 'docs', 'config.md')
  with open(path, encoding='utf-8') as f:
    assert f.read() == config_lib.reference(), (
        'docs/config.md is stale: python -m vae_jax.config > docs/config.md')
  flat = config_lib.flatten(config_lib.default_config().to_dict())
  documented = [name for name, _, doc in config_lib.FIELDS if doc.strip()]
  assert sorted(documented) == sorted(flat) and len(documented) == len(flat)
  for name in flat:
    assert f'| `{name}` |' in config_lib.reference(), name
  assert '*resumable*' in next(line for line in config_lib.reference().splitlines()
                               if line.startswith('| `train.num_steps`'))


@pytest.mark.parametrize('name', sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                                         if f.endswith('.py') and not f.startswith('_')))
def test_every_config_file_refuses_an_unknown_option(name):
  """A misspelt variant (':runlocl') must not run the full experiment."""
  with pytest.raises(config_lib.ConfigError, match=f"configs/{name}.py: unknown option 'runlocl'"):
    load_config_file(name, 'runlocl')


def _one_step(config, data_dir):
  """Builds the experiment of `config` and runs one train step on a batch of 10."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vae_jax import data  # pylint: disable=g-import-not-at-top
  from vae_jax import sharding  # pylint: disable=g-import-not-at-top
  from vae_jax import train  # pylint: disable=g-import-not-at-top
  config.data.data_dir = data_dir
  config.train.batch_size, config.train.steps_per_call = 10, 1
  config.train.num_epochs, config.train.num_steps = 0.0, 1
  config.eval.batch_size = 10
  data.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
      exp = experiment.build_experiment(config)
      # On the devices as the loop puts it (the step donates the state's buffers).
      state = sharding.put_replicated(experiment.init_state(exp), sharding.make_mesh())
      state, metrics = train.make_train_step(exp)(
          state, jnp.asarray(exp.dataset.train), np.arange(10, dtype=np.int32)[None],
          exp.keys['train'], experiment.labels_of(exp, exp.dataset.train_labels))
  finally:
    data.clear_cache()
  return int(state.step), {k: float(v[0]) for k, v in metrics.items()}


@pytest.mark.parametrize('name', sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                                         if f.endswith('.py') and not f.startswith('_')))
def test_every_config_file_builds_and_takes_a_step(name, tmp_path):
  """Each shipped config, as shipped (its data mocked where it is a TFDS dataset), builds
  its model, optimiser and objective and takes one finite step."""
  step, metrics = _one_step(load_config_file(name), str(tmp_path / 'tfds'))
  assert step == 1 and metrics['finite'] == 1.0, metrics
  assert np.isfinite(metrics['loss']), metrics


def test_durations_in_epochs_come_from_the_split_sizes():
  from vae_jax import data  # pylint: disable=g-import-not-at-top
  c = config_lib.default_config()
  c.data.name, c.data.train_split, c.train.batch_size = 'embedded_mnist', 'train', 100
  # The table's size is the split's when read.
  assert data.load(c.data).num_train == data.SPLIT_SIZES['embedded_mnist']['train'] == 4500
  assert config_lib.steps_per_epoch(c) == 45 and config_lib.steps(c, epochs=2.5) == 112
  # The same duration as steps or as examples (whole batches only).
  assert config_lib.steps(c, steps=112) == config_lib.steps(c, examples=11_299) == 112
  for durations in ({}, {'steps': 5, 'epochs': 1}, {'epochs': 1, 'examples': 100}):
    with pytest.raises(ValueError, match='exactly one of steps, epochs or examples'):
      config_lib.steps(c, **durations)
  c.data.name, c.train.batch_size = 'binarized_mnist', 20
  assert config_lib.steps(c, epochs=10) == 25_000
  c.data.train_split = 'train[:80%]'
  with pytest.raises(config_lib.ConfigError, match='config.data.train_split: the size of'):
    config_lib.steps(c, epochs=1)
