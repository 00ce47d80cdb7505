"""`--mode sample` as separate processes: killed with SIGKILL and resumed, and two processes of
one `jax.distributed` job on the loopback (2 CPU devices each) against one process with 4.

Both must give the same bytes: the samples depend on the seed and the round only, not on how
many processes or devices drew them, nor on a kill in between.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

import sample_rounds
from evaluation import evaluate as evaluation
from evaluation import statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ROUNDS = 24
ARGS = ["--config", "configs/analytic/ffhq32.py", "--mode", "sample",
        "--config.eval.batch_size=4", f"--config.eval.num_samples={4 * NUM_ROUNDS}",
        "--config.sampling.num_steps=40"]


def _command(workdir, *extra):
  return [sys.executable, "main.py", "--workdir", str(workdir), *ARGS, *extra]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _rows(folder, round_index, hosts=("",)):
  return np.concatenate([np.load(sample_rounds.round_path(folder, round_index, h))["samples"]
                         for h in hosts])


def test_sigkill_then_resume_and_two_hosts_equal_one_uninterrupted_layout(tmp_path):
  # One process, 4 devices: killed (SIGKILL) once a few rounds are written, then rerun.
  single = tmp_path / "single"
  out = single / "eval"
  run = subprocess.Popen(_command(single), cwd=REPO, env=_env(4), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and run.poll() is None:
    if os.path.exists(sample_rounds.round_path(str(out), 2)):
      break
    time.sleep(0.01)
  assert run.poll() is None, "the run ended before it could be killed"
  run.send_signal(signal.SIGKILL)
  run.wait()
  written = sample_rounds.host_round_files(str(out), "")
  assert 3 <= len(written) < NUM_ROUNDS

  # Meanwhile-free: the two-process job (2 devices each) into its own folder.
  hosts = tmp_path / "hosts"
  port = _free_port()
  jobs = [subprocess.Popen(
      _command(hosts, f"--config.sampling.distributed.coordinator_address=127.0.0.1:{port}",
               "--config.sampling.distributed.num_processes=2",
               f"--config.sampling.distributed.process_id={p}"),
      cwd=REPO, env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for p in range(2)]
  resumed = subprocess.run(_command(single), cwd=REPO, env=_env(4), capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "already written" in resumed.stderr
  for job in jobs:
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-2000:]

  files = statistics.sample_files(str(hosts / "eval"))
  assert len(files) == 2 * NUM_ROUNDS  # samples_<r>_host0/1.npz, read round by round
  assert os.path.basename(files[1]) == "samples_0_host1.npz"
  assert evaluation._common_fingerprint(files)["process_count"] == 2  # pylint: disable=protected-access
  for r in range(NUM_ROUNDS):
    resumed_rows = _rows(str(out), r)
    assert resumed_rows.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(resumed_rows, _rows(str(hosts / "eval"), r,
                                                      ("_host0", "_host1")))
  assert not [f for f in os.listdir(out) if f.endswith((".tmp", ".lock"))]
