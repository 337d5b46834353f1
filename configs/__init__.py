"""The shipped configs: `--config=configs/<name>.py[:options]`, or `--config=<name>[:options]`
from any directory once vae_jax is installed; a config of one's own may import them
(`from configs import ladder`)."""
