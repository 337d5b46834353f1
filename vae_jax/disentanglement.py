"""Disentanglement metrics on data with ground-truth factors (Locatello et al. 2019's protocol).

A metric reads a representation function, images -> codes [n, D] (a trained
VAE's posterior means, `mean_representation`), and a `GroundTruth`: images
indexed by their factors, every combination present once (dSprites, 3D Shapes,
data.render_shapes). Each metric draws its own samples from a numpy Generator,
with the sample sizes of disentanglement_lib (Locatello et al. 2019,
"Challenging Common Assumptions in the Unsupervised Learning of Disentangled
Representations") as defaults, and encodes them a chunk at a time, so memory
is bounded whatever the sample size.

- beta_vae_score: Higgins et al. 2017, "beta-VAE: Learning Basic Visual Concepts
  with a Constrained Variational Framework".
- factor_vae_score: Kim & Mnih 2018, "Disentangling by Factorising".
- mig: Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs".
- dci: Eastwood & Williams 2018, "A Framework for the Quantitative Evaluation of
  Disentangled Representations" (gradient boosted trees, as disentanglement_lib).
- sap: Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts
  from Unlabeled Observations".

The classifiers are scikit-learn's, as in disentanglement_lib.
"""

import contextlib
import math
import warnings

import numpy as np

from vae_jax import data
from vae_jax import evaluate as evaluate_lib

METRICS = ('beta_vae', 'factor_vae', 'mig', 'dci', 'sap')
# Images encoded per call of the representation function: bounds the memory of
# a metric whatever its sample size.
_CHUNK = 4096


class GroundTruth:
  """Images addressed by their factor values: `images_of(factors)` for any combination.

  images uint8 [N, H, W, C], factors int32 [N, F] with values in [0, sizes[f]).
  The metrics that hold a factor fixed (beta_vae, factor_vae) need every
  combination; a dataset that lacks some is refused by name there.
  """

  def __init__(self, images, factors, sizes, names=None, name='dataset'):
    self.images, self.sizes, self.name = images, tuple(int(s) for s in sizes), name
    self.names = tuple(names or (f'factor_{i}' for i in range(len(self.sizes))))
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape != (len(images), len(self.sizes)):
      raise ValueError(f'{name}: factors of shape {factors.shape} do not match '
                       f'{len(images)} images with {len(self.sizes)} factors')
    self.factors = factors
    self._lookup = np.full(int(np.prod(self.sizes)), -1, np.int64)
    self._lookup[np.ravel_multi_index(tuple(factors.T), self.sizes)] = np.arange(len(images))

  @classmethod
  def of_dataset(cls, dataset: data.Dataset) -> 'GroundTruth':
    """The training split of a dataset with factors (data.FACTORS)."""
    if dataset.train_factors is None:
      raise ValueError(f'dataset {dataset.name!r} has no ground-truth factors; the '
                       f'disentanglement metrics need one of {tuple(data.FACTORS)}')
    return cls(dataset.train, dataset.train_factors, dataset.factor_sizes,
               dataset.factor_names, dataset.name)

  @property
  def num_factors(self) -> int:
    return len(self.sizes)

  def sample_factors(self, rng, num) -> np.ndarray:
    """int [num, F]: each factor uniform over its values, independently."""
    return np.stack([rng.integers(0, size, num) for size in self.sizes], axis=-1)

  def images_of(self, factors) -> np.ndarray:
    """uint8 images of the given factor combinations [n, F]."""
    rows = self._lookup[np.ravel_multi_index(tuple(np.asarray(factors).T), self.sizes)]
    if (rows < 0).any():
      missing = np.asarray(factors)[rows < 0][0].tolist()
      raise ValueError(f'{self.name}: no image has the factors {missing} '
                       f'({", ".join(self.names)}); the metrics need every combination')
    return self.images[rows]


def mean_representation(model, params, binarization, batch_size=500):
  """images uint8 [n, ...] -> float64 codes [n, D]: every layer's posterior mean, flattened.

  evaluate.posterior_means, the means active units read: E_q[z | x] of one
  layer's Gaussian, or of each layer in turn for a hierarchy; from one draw
  where a layer has no closed-form mean (a flow).
  """
  def represent(images):
    means = evaluate_lib.posterior_means(model, params, data.to_float(images, binarization),
                                     batch_size=batch_size, num_samples=1)
    return np.concatenate([m.reshape(len(m), -1) for m in means], axis=-1).astype(np.float64)
  return represent


def _codes(gt, represent, factors):
  """Codes [n, D] of the images of `factors` [n, F], encoded _CHUNK at a time."""
  return np.concatenate([represent(gt.images_of(factors[i:i + _CHUNK]))
                         for i in range(0, len(factors), _CHUNK)])


def _factor_code_sample(gt, represent, rng, num):
  """(codes [num, D], factors [num, F]) of `num` images with uniformly drawn factors."""
  factors = gt.sample_factors(rng, num)
  return _codes(gt, represent, factors), factors


@contextlib.contextmanager
def _quiet_sklearn():
  """scikit-learn's convergence warnings, which the protocol's fixed settings provoke."""
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', ConvergenceWarning)
    yield


def _fixed_factor_groups(gt, rng, num_points, batch_size, pairs):
  """Factor draws of `num_points` points: each a random factor k and `batch_size`
  combinations sharing its value (as pairs of [batch_size, F] draws when `pairs`).

  Returns (k [num_points], factors [num_points, (2,) batch_size, F]).
  """
  k = rng.integers(0, gt.num_factors, num_points)
  shape = (num_points, 2 if pairs else 1, batch_size)
  factors = gt.sample_factors(rng, int(np.prod(shape))).reshape(shape + (gt.num_factors,))
  rows = np.arange(num_points)
  fixed = factors[rows, 0, 0, k] if not pairs else factors[rows, 0, :, k]
  if pairs:  # Higgins et al.: pair i shares factor k's value, pairs differ from each other.
    factors[rows, 1, :, k] = fixed
  else:  # Kim & Mnih: the whole batch shares one value of factor k.
    factors[rows, 0, :, k] = fixed[:, None]
  return k, factors


def _grouped_codes(gt, represent, factors):
  """Codes of factor draws [P, G, B, F] -> [P, G, B, D], a chunk of points at a time."""
  per_point = int(np.prod(factors.shape[1:3]))
  step = max(1, _CHUNK // per_point)
  out = [represent(gt.images_of(factors[i:i + step].reshape(-1, gt.num_factors)))
         .reshape(factors[i:i + step].shape[:3] + (-1,))
         for i in range(0, len(factors), step)]
  return np.concatenate(out)


def beta_vae_score(gt, represent, rng, *, batch_size=64, num_train=10_000, num_eval=5_000):
  """Higgins et al. 2017: accuracy of a linear classifier telling which factor a batch
  of pairs shares, from the mean |z_1 - z_2| over the batch."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top

  def points(num):
    k, factors = _fixed_factor_groups(gt, rng, num, batch_size, pairs=True)
    codes = _grouped_codes(gt, represent, factors)
    return np.mean(np.abs(codes[:, 0] - codes[:, 1]), axis=1), k
  x_train, y_train = points(num_train)
  x_eval, y_eval = points(num_eval)
  with _quiet_sklearn():
    model = linear_model.LogisticRegression(random_state=int(rng.integers(2**31)))
    model.fit(x_train, y_train)
  return {'beta_vae_score': float(np.mean(model.predict(x_eval) == y_eval)),
          'beta_vae_train_accuracy': float(np.mean(model.predict(x_train) == y_train))}


def factor_vae_score(gt, represent, rng, *, batch_size=64, num_train=10_000, num_eval=5_000,
                     num_variance_estimate=10_000):
  """Kim & Mnih 2018: accuracy of the majority-vote classifier from the code with the
  smallest variance (each code scaled by its std over the data) to the factor held
  fixed in a batch. Codes that never vary are left out (they would divide by 0)."""
  codes, _ = _factor_code_sample(gt, represent, rng, num_variance_estimate)
  global_variances = np.var(codes, axis=0, ddof=1)
  active = global_variances > 0
  if not active.any():
    return {'factor_vae_score': 0.0, 'factor_vae_train_accuracy': 0.0,
            'factor_vae_active_dims': 0}

  def votes(num):
    k, factors = _fixed_factor_groups(gt, rng, num, batch_size, pairs=False)
    codes = _grouped_codes(gt, represent, factors)[:, 0]
    local = np.var(codes, axis=1, ddof=1)[:, active] / global_variances[active]
    counts = np.zeros((int(active.sum()), gt.num_factors), np.int64)
    np.add.at(counts, (np.argmin(local, axis=1), k), 1)
    return counts
  train_votes, eval_votes = votes(num_train), votes(num_eval)
  classifier = np.argmax(train_votes, axis=1)
  rows = np.arange(len(classifier))
  return {
      'factor_vae_score': float(eval_votes[rows, classifier].sum() / eval_votes.sum()),
      'factor_vae_train_accuracy': float(train_votes[rows, classifier].sum() / train_votes.sum()),
      'factor_vae_active_dims': int(active.sum()),
  }


def _histogram_discretize(codes, num_bins):
  """Each code [n, D] into `num_bins` equal-width bins over its range (disentanglement_lib)."""
  out = np.zeros(codes.shape, np.int64)
  for i in range(codes.shape[1]):
    out[:, i] = np.digitize(codes[:, i], np.histogram(codes[:, i], num_bins)[1][:-1])
  return out


def _mutual_information(a, b):
  """I(a; b) in nats of two discrete samples [n], from their joint frequencies."""
  _, a = np.unique(a, return_inverse=True)
  _, b = np.unique(b, return_inverse=True)
  joint = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(joint, (a, b), 1.0)
  joint /= len(a)
  outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
  nonzero = joint > 0
  return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])))


def mig(gt, represent, rng, *, num_train=10_000, num_bins=20):
  """Chen et al. 2018: for each factor, the gap between the two codes with the most mutual
  information with it, over the factor's entropy; averaged over factors."""
  codes, factors = _factor_code_sample(gt, represent, rng, num_train)
  discrete = _histogram_discretize(codes, num_bins)
  info = np.array([[_mutual_information(discrete[:, i], factors[:, j])
                    for j in range(gt.num_factors)] for i in range(codes.shape[1])])
  entropy = np.array([_mutual_information(factors[:, j], factors[:, j])
                      for j in range(gt.num_factors)])
  top = np.sort(info, axis=0)[::-1]
  second = top[1] if len(top) > 1 else np.zeros_like(top[0])
  return {'mig': float(np.mean((top[0] - second) / entropy))}


def _normalised_entropy(p, axis):
  """Entropy along `axis` of the nonnegative weights p, normalised by log(its length)."""
  p = p + 1e-11
  p = p / p.sum(axis=axis, keepdims=True)
  return -np.sum(p * np.log(p), axis=axis) / math.log(p.shape[axis])


def dci(gt, represent, rng, *, num_train=10_000, num_test=5_000):
  """Eastwood & Williams 2018: from the importance of each code for predicting each factor
  (gradient boosted trees), disentanglement (each code predicts one factor),
  completeness (each factor is predicted by one code) and informativeness (the
  trees' accuracy on held-out samples, averaged over factors)."""
  from sklearn import ensemble  # pylint: disable=g-import-not-at-top
  x_train, y_train = _factor_code_sample(gt, represent, rng, num_train)
  x_test, y_test = _factor_code_sample(gt, represent, rng, num_test)
  importance = np.zeros((x_train.shape[1], gt.num_factors))
  train_accuracy, test_accuracy = [], []
  for j in range(gt.num_factors):
    model = ensemble.GradientBoostingClassifier(random_state=int(rng.integers(2**31)))
    model.fit(x_train, y_train[:, j])
    importance[:, j] = np.abs(model.feature_importances_)
    train_accuracy.append(np.mean(model.predict(x_train) == y_train[:, j]))
    test_accuracy.append(np.mean(model.predict(x_test) == y_test[:, j]))
  if importance.sum() == 0:
    importance = np.ones_like(importance)
  per_code = 1.0 - (_normalised_entropy(importance, axis=1) if gt.num_factors > 1
                    else np.zeros(len(importance)))
  per_factor = 1.0 - (_normalised_entropy(importance, axis=0) if len(importance) > 1
                      else np.zeros(gt.num_factors))
  total = importance.sum()
  return {
      'dci_disentanglement': float(np.sum(per_code * importance.sum(axis=1) / total)),
      'dci_completeness': float(np.sum(per_factor * importance.sum(axis=0) / total)),
      'dci_informativeness': float(np.mean(test_accuracy)),
      'dci_informativeness_train': float(np.mean(train_accuracy)),
  }


def sap(gt, represent, rng, *, num_train=10_000, num_test=5_000):
  """Kumar et al. 2018: for each factor, the gap in held-out accuracy between the two
  codes that predict it best, each alone through a linear SVM; averaged over factors."""
  from sklearn import svm  # pylint: disable=g-import-not-at-top
  x_train, y_train = _factor_code_sample(gt, represent, rng, num_train)
  x_test, y_test = _factor_code_sample(gt, represent, rng, num_test)
  scores = np.zeros((x_train.shape[1], gt.num_factors))
  with _quiet_sklearn():
    for i in range(x_train.shape[1]):
      for j in range(gt.num_factors):
        if np.ptp(x_train[:, i]) == 0:
          continue  # A constant code predicts nothing; an SVM on it would not converge.
        model = svm.LinearSVC(C=0.01, class_weight='balanced')
        model.fit(x_train[:, i:i + 1], y_train[:, j])
        scores[i, j] = np.mean(model.predict(x_test[:, i:i + 1]) == y_test[:, j])
  top = np.sort(scores, axis=0)[::-1]
  second = top[1] if len(top) > 1 else np.zeros_like(top[0])
  return {'sap': float(np.mean(top[0] - second))}


_FUNCTIONS = {'beta_vae': beta_vae_score, 'factor_vae': factor_vae_score, 'mig': mig,
              'dci': dci, 'sap': sap}


def evaluate(gt, represent, seed, *, metrics=METRICS, num_train=10_000, num_eval=5_000):
  """Every metric in `metrics`, each from its own Generator seeded from (seed, its name),
  with `num_train` points to fit on and `num_eval` to score (disentanglement_lib's
  10,000 and 5,000 by default). Returns one flat dict of numbers."""
  results = {}
  for name in metrics:
    rng = np.random.default_rng([seed, METRICS.index(name)])
    kwargs = {'num_train': num_train}
    if name in ('beta_vae', 'factor_vae'):
      kwargs['num_eval'] = num_eval
    elif name in ('dci', 'sap'):
      kwargs['num_test'] = num_eval
    results.update(_FUNCTIONS[name](gt, represent, rng, **kwargs))
  return results


def evaluate_model(model, params, dataset, seed, *, num_train=10_000, num_eval=5_000,
                   batch_size=500) -> dict:
  """`evaluate` of a model's posterior means on the training split of a factor dataset."""
  represent = mean_representation(model, params, dataset.binarization, batch_size)
  return evaluate(GroundTruth.of_dataset(dataset), represent, seed, num_train=num_train,
                  num_eval=num_eval)
