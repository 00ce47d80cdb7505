"""Tiny DDPM++, continuous sub-VP SDE, 16 px: the CPU stand-in for
`subvp/cifar10_ddpmpp_continuous.py` (`tiny/ddpmpp_vp_continuous.py` with another SDE)."""
from configs.tiny import ddpmpp_vp_continuous


def get_config():
  config = ddpmpp_vp_continuous.get_config()
  config.training.sde = 'subvpsde'
  return config
