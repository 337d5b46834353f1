"""vae_jax: Variational Autoencoders in JAX/Flax, from a laptop CPU to a TPU pod."""

import importlib.metadata as _metadata
import os as _os

__version__ = '0.1.0'

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_DOTS_AND_CONVOLUTIONS = ('LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,'
                             'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION')
# jaxlib versions whose XLA:CPU hands elementwise and reduction fusions to YNNPACK and
# miscompiles some of them (jax-ml/jax#39103): 0.10.2 and the 0.11 series.
_YNN_MISCOMPILES = ((0, 10, 2), (0, 12, 0))


def _jaxlib_version():
  try:
    text = _metadata.version('jaxlib')
  except _metadata.PackageNotFoundError:
    return None
  parts = []
  for part in text.split('.')[:3]:
    digits = ''.join(c for c in part if c.isdigit())
    parts.append(int(digits) if digits else 0)
  return tuple(parts)


def _keep_ynnpack_to_dots_and_convolutions():
  """XLA_FLAGS: YNNPACK for matmuls and convolutions only, on the jaxlib versions that need it.

  jaxlib 0.10.2's XLA:CPU returns wrong values, silently, from some elementwise
  and reduction fusions it hands to YNNPACK once they pass about 96k elements: a
  multiply of broadcast operands then a sum (4,096 3x4 images through a learned
  causal context: the chain no longer summed to 1) and jax-ml/jax#39103's
  vmapped matrix-vector product then a sum. Restricting YNNPACK to single dots
  and convolutions fixes both, and it is what the train step already compiles
  with (train.step_compiler_options), so training is unchanged. Set here, before
  JAX starts its backend; a user's own XLA_FLAGS entry for the flag wins, and
  VAE_JAX_KEEP_XLA_DEFAULTS=1 leaves XLA's defaults (at the risk above).
  """
  if _os.environ.get('VAE_JAX_KEEP_XLA_DEFAULTS', '') not in ('', '0'):
    return
  version = _jaxlib_version()
  if version is None or not _YNN_MISCOMPILES[0] <= version < _YNN_MISCOMPILES[1]:
    return
  flags = _os.environ.get('XLA_FLAGS', '')
  if YNN_FLAG not in flags:
    _os.environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}={YNN_DOTS_AND_CONVOLUTIONS}'.strip()


_keep_ynnpack_to_dots_and_convolutions()
