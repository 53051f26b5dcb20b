"""Two processes on localhost (two CPU devices each) train like one process on the same global
batches, each feeding only its own rows, and save one checkpoint directory together."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

HERE = pathlib.Path(__file__).resolve().parent
MESH = dict(data=1, fsdp=2, tensor=2)  # fsdp spans the processes, tensor stays inside each


def _batches(config):
  from test_sharding import tiny_batch, tiny_model  # pylint: disable=g-import-not-at-top
  model, num_visual = tiny_model(config)
  return [tiny_batch(config, num_visual, model.video_token_id, seed=s) for s in (0, 1)]


def worker(rank: int, count: int, port: int, out: pathlib.Path) -> None:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from test_sharding import tiny_config, train_steps  # pylint: disable=g-import-not-at-top

  from longvid_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import checkpoint  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  index, n = distributed.initialize({"distributed": dict(
      coordinator=f"localhost:{port}", num_processes=count, process_id=rank)})
  assert (index, n) == (rank, count) and jax.device_count() == 2 * count
  config = tiny_config()
  params, losses, _ = train_steps(config, MESH, _batches(config))
  checkpoint.save_params(out / "params", params)  # every process writes its shards, one directory
  params = multihost_utils.process_allgather(params, tiled=True)
  losses = [float(x.addressable_data(0)) for x in losses]  # replicated scalars
  if rank == 0:
    np.save(out / "losses.npy", np.asarray(losses))
  jax.distributed.shutdown()


def test_job_shape_comes_from_config_then_environment(monkeypatch):
  from longvid_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
            "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(k, raising=False)
  assert distributed._settings({}) is None  # one process: nothing to join
  cfg = {"distributed": dict(coordinator="h:1", num_processes=4, process_id=3)}
  assert distributed._settings(cfg) == dict(coordinator_address="h:1", num_processes=4,
                                            process_id=3)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "e:2")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
    distributed._settings({})
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert distributed._settings({})["process_id"] == 1
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "8")
  assert distributed._settings({}) == {}  # jax reads SLURM itself


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from test_sharding import assert_trees_close, tiny_config, train_steps  # pylint: disable=g-import-not-at-top

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent),
                                         os.environ.get("PYTHONPATH", "")]))
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(port), str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for r in range(2)]
  config = tiny_config()
  want, want_losses, _ = train_steps(config, dict(data=1), _batches(config),
                                     devices=jax.devices()[:1])
  for p in procs:
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log[-4000:]
  np.testing.assert_allclose(np.load(tmp_path / "losses.npy"),
                             [float(x) for x in want_losses], rtol=1e-5)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), want)
  with ocp.StandardCheckpointer() as c:
    got = c.restore((tmp_path / "params").absolute(), target)
  assert_trees_close(got, jax.device_get(want))
  assert len(traverse_util.flatten_dict(got)) == len(traverse_util.flatten_dict(want))


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4]))
