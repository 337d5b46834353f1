"""Every model family of the contract, end to end on the embedded digits.

Each family (a config field or two) trains a few steps, resumes bit-exactly
from a checkpoint, evaluates (ELBO, IWAE, log p(x), active units, KL per
layer) through evaluate_workdir and draws samples through generate. Continuous
likelihoods report in discrete units: a discrete log P(x) is never above 0.
"""

import os
import shutil

import jax
import numpy as np
import pytest

from vae_jax import config as config_lib
from vae_jax import evaluate_workdir
from vae_jax import experiment
from vae_jax import generate
from vae_jax import train

from test_train import assert_trees_equal, restored_state, tiny_config

FAMILIES = {
    'vamp': dict(model__prior='vamp', model__prior_components=5,
                 objective__kl_warmup_steps=20),
    'mixture': dict(model__prior='mixture', model__prior_components=4),
    'iaf': dict(model__posterior='iaf', model__iaf_steps=2, model__iaf_hidden=(16,),
                model__iaf_context_dim=8),
    'conditional': dict(model__conditional=True),
    'class_prior': dict(model__conditional=True, model__class_conditional_prior=True),
    'logistic_mixture': dict(data__binarization='none', model__likelihood='logistic_mixture',
                             model__num_mixtures=3),
    'gaussian': dict(data__binarization='none', model__likelihood='gaussian'),
    'local_bernoulli': dict(model__likelihood='local_bernoulli', model__context_radius=2),
    'gaussian_binary': dict(data__binarization='static', model__likelihood='gaussian'),
    'two_layers_mixture': dict(model__upper_latent_dims=(3,), model__upper_hidden=((16,),),
                               model__prior='mixture', model__prior_components=3),
    'iwae_vamp': dict(model__prior='vamp', model__prior_components=3, objective__name='iwae',
                      objective__num_samples=3),
    # Top-down hierarchies of 2, 5 and 20 groups, dense and spatial.
    'top_down_2': dict(model__hierarchy='top_down', model__groups=(6, 3), model__state_width=16,
                       model__block_hidden=8),
    'top_down_local': dict(model__hierarchy='top_down', model__groups=(6, 3),
                           model__state_width=16, model__block_hidden=8,
                           model__likelihood='local_bernoulli'),
    'top_down_causal': dict(model__hierarchy='top_down', model__groups=(6, 3),
                            model__state_width=16, model__block_hidden=8,
                            model__likelihood='causal_bernoulli', model__context_features=4,
                            model__context_layers=2),
    'top_down_5': dict(model__hierarchy='top_down', model__groups=(8, 8, 4, 4, 2),
                       model__state_width=16, model__block_hidden=8, model__merge='precision',
                       model__scale='exp', optimizer__ema_decay=0.9,
                       optimizer__skip_threshold=1e4),
    'top_down_20': dict(model__hierarchy='top_down', model__groups=(2,) * 20,
                        model__state_width=16, model__block_hidden=8, model__remat=True,
                        objective__free_bits=0.05),
    'top_down_spatial': dict(model__hierarchy='top_down', model__architecture='conv',
                             model__groups=(2, 2, 3), model__group_resolutions=(14, 7, 1),
                             model__state_width=8, model__block_hidden=4),
}


def family_config(name, **extra):
  fields = dict(logging__tensorboard=False, train__num_steps=20, train__eval_every_steps=20,
                train__checkpoint_every_steps=10, **FAMILIES[name])
  return tiny_config(**{**fields, **extra})


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_family_trains_resumes_evaluates_and_samples(name, tmp_path):
  config = family_config(name)
  config_lib.validate(config)
  straight = str(tmp_path / 'straight')
  metrics = train.train_and_evaluate(config, straight)
  assert np.isfinite(metrics['elbo']) and metrics['elbo'] < 0  # Discrete units.

  # The run as if stopped after its step-10 checkpoint: resuming must redo steps 11-20 exactly.
  interrupted = str(tmp_path / 'interrupted')
  shutil.copytree(straight, interrupted)
  shutil.rmtree(os.path.join(interrupted, 'checkpoints', '20'))
  train.train_and_evaluate(config, interrupted)
  step_a, state_a, _ = restored_state(straight, config)
  step_b, state_b, _ = restored_state(interrupted, config)
  assert step_a == step_b == 20
  assert_trees_equal(state_a, state_b)

  results = evaluate_workdir.evaluate_workdir(straight, 'test', num_samples=8, num_images=12,
                                              progress=False)
  assert results['elbo'] <= results['log_px'] + 1e-3 and results['log_px'] < 0
  assert results['kl'] == pytest.approx(results['recon'] - results['elbo'], abs=1e-3)
  assert sum(results['kl_per_layer']) == pytest.approx(float(np.sum(results['kl_per_dim'])),
                                                       rel=1e-5, abs=1e-5)
  assert len(results['active_units_per_layer']) == len(results['kl_per_layer'])
  out_dir = str(tmp_path / 'generated')
  generate.generate(straight, out_dir, [1.0], 10, [0, 1], [0, 1], 0, traverse_dims=2)
  expected = ['interpolation.png', 'reconstructions.png', 'samples_t1.png', 'traversal.png']
  if len(results['kl_per_layer']) > 1:
    expected.append('kl_per_layer.png')
  if config.model.hierarchy == 'top_down':
    expected.append('hierarchy.png')
    assert len(results['kl_per_layer']) == len(config.model.groups)
  assert sorted(os.listdir(out_dir)) == sorted(expected)


def test_gaussian_on_binary_data_reports_discrete_units(tmp_path):
  # A density on {0, 1} pixels could report any positive number; dequantised, the
  # bound is on log P(x) of the binary image, at most 0 and at least D log(1/2) for
  # a model no better than a coin.
  config = family_config('gaussian_binary', train__num_steps=40)
  metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert -784 * np.log(2) * 3 < metrics['elbo'] < 0


@pytest.mark.parametrize('overrides,match', [
    (dict(data__name='binarized_mnist', data__binarization='static', model__conditional=True),
     'model.conditional: this dataset has no labels'),
    (dict(model__class_conditional_prior=True), 'needs model.conditional=True'),
    (dict(model__prior='vamp', model__posterior='iaf'), "model.prior: 'vamp' evaluates"),
    (dict(model__prior='vamp', model__upper_latent_dims=(3,), model__upper_hidden=((8,),)),
     'model.prior: .vamp. is a prior for one stochastic layer'),
    (dict(model__prior='flow'), 'model.prior'),
    (dict(model__posterior='nf'), 'model.posterior'),
    (dict(model__prior_components=0), 'model.prior_components'),
    (dict(model__iaf_hidden=()), 'model.iaf_hidden'),
    (dict(model__num_mixtures=0), 'model.num_mixtures'),
    (dict(model__likelihood='local_bernoulli', model__context_radius=0),
     'model.context_radius: must be a positive int'),
    (dict(model__context_radius=2), "model.context_radius: is the local_bernoulli"),
    (dict(model__likelihood='causal_bernoulli', model__context_features=0),
     'model.context_features: must be a positive int'),
    (dict(model__likelihood='causal_bernoulli', model__context_layers=0),
     'model.context_layers: must be a positive int'),
    (dict(data__binarization='none', model__likelihood='causal_bernoulli'),
     "model.likelihood: 'causal_bernoulli' needs binary data"),
    (dict(data__binarization='none', model__likelihood='local_bernoulli'),
     "model.likelihood: 'local_bernoulli' needs binary data"),
])
def test_family_fields_are_validated(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(tiny_config(**overrides))


def test_conditional_samples_one_row_per_class(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(family_config('class_prior'), workdir)
  exp, params, _ = experiment.load_trained(workdir)
  labels = np.repeat(np.arange(10), 2)
  from vae_jax import sampling  # pylint: disable=g-import-not-at-top
  images = np.asarray(sampling.prior_samples(exp.model, params, jax.random.key(0), 20, 1.0,
                                             labels))
  assert images.shape == (20, 28, 28, 1)
  # The same noise with another class gives another image: the label is read.
  other = np.asarray(sampling.prior_samples(exp.model, params, jax.random.key(0), 20, 1.0,
                                            (labels + 1) % 10))
  assert not np.allclose(images, other)
