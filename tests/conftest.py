"""Pytest setup: run JAX on the CPU with 4 simulated devices unless the caller chose otherwise."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The slowest test files first (measured, serial seconds ~125 down to ~20): pytest.ini hands
# whole files to two workers in collection order, so starting with the long ones keeps one
# worker from finishing a long file alone at the end.
SLOW_FILES_FIRST = (
    "test_demo.py", "test_train.py", "test_guidance.py", "test_train_classifier.py",
    "test_conditional.py", "test_models_ncsnpp_ddpm.py",
    "test_sampling.py", "test_samplers_sigma.py", "test_reliability_limits.py",
    "test_diffusers.py", "test_run_sample.py", "test_evaluation.py",
    "test_calibrate.py", "test_ermongroup.py", "test_reliability.py", "test_likelihood.py",
    "test_processes.py", "test_pds.py", "test_main.py", "test_pytorch_checkpoints.py",
    "test_sampler_interface.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Runs the files of SLOW_FILES_FIRST first (in that order), the rest after; the tests of a
  file keep their order."""
  rank = {name: k for k, name in enumerate(SLOW_FILES_FIRST)}
  order = {id(item): k for k, item in enumerate(items)}
  items.sort(key=lambda item: (rank.get(os.path.basename(str(item.fspath)), len(rank)),
                               order[id(item)]))
