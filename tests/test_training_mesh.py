"""Data parallelism on a device mesh and across processes (dlx_jax.training's mesh, the samplers' and
EM's sharded data): the same numbers on 1, 4 or 2×1 devices.

JAX fixes its devices when it starts, so every check runs in a fresh Python
(``tests/mesh_worker.py``): with ``JAX_NUM_CPU_DEVICES=4`` for the mesh, or as two processes joined
by ``jax.distributed`` over 127.0.0.1 (gloo collectives), each pinned to its own core and bounded by a
timeout. The one-device mesh (no subprocess needed) must give bit for bit the numbers of no mesh.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlx_jax import cnn, mixture, training
from dlx_jax.data import load_dataset, to_float_images
from tests.helpers import ATOL_MESH_F32, ATOL_MESH_SAMPLES, RTOL_MESH_F32

WORKER = Path(__file__).with_name("mesh_worker.py")
ROOT = WORKER.parent.parent
TIMEOUT_S = 240  # a wait on a subprocess never hangs the suite


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_NUM_CPU", "DLX_", "XLA_FLAGS"))}
    env.update({"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}, **extra)
    return env


def _worker(checks: str, *args: str, devices: int = 4) -> dict:
    proc = subprocess.run(
        [sys.executable, str(WORKER), checks, *args],
        env=_env(JAX_NUM_CPU_DEVICES=str(devices)),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_steps_agree(r: dict, models: tuple[str, ...]) -> None:
    for model in models:
        assert r[f"{model}_all_reduce"] > 0, f"{model}: no all-reduce in the compiled sharded step"
        assert r[f"{model}_params_replicated"], f"{model}: the new params are not replicated"
        # the update moved the params by update_scale; the sharded one agrees far below it
        assert r[f"{model}_param_diff"] <= ATOL_MESH_F32 + RTOL_MESH_F32 * r[f"{model}_update_scale"], model
        assert r[f"{model}_loss_diff"] <= ATOL_MESH_F32 * 100, model  # the VAE's summed loss is O(1e4)


def _assert_samplers_agree(r: dict, kinds: tuple[str, ...]) -> None:
    for sampler in kinds:
        assert r[f"{sampler}_sharded"] and r[f"{sampler}_partitioned"]
        assert r[f"{sampler}_diff"] <= ATOL_MESH_SAMPLES * r[f"{sampler}_scale"], sampler


def test_mesh_steps_em_sampler_resume_and_errors(tmp_path):
    """On 4 simulated devices, each against one device on the same global batch: one CNN and one
    VAE train step (an all-reduce in the compiled step, the state replicated); EM with the data
    sharded; DDIM with the image batch sharded; ``fit`` interrupted and resumed = uninterrupted,
    bit for bit; a batch that does not divide and too many devices are one ValueError each."""
    r = _worker("train_steps,em,sampler,resume,errors", str(tmp_path))
    assert r["devices"] == 4
    _assert_steps_agree(r, ("cnn", "vae"))
    assert r["em_data_sharded"] and r["em_all_reduce"] > 0
    assert r["em_iterations"][0] == r["em_iterations"][1]
    assert r["em_param_diff"] <= ATOL_MESH_F32 and r["em_trace_diff"] <= ATOL_MESH_F32
    _assert_samplers_agree(r, ("ddim",))
    assert r["resume_state_diff"] == 0.0
    assert r["resume_loss_resumed"] == r["resume_loss_straight"]
    assert r["resume_sharding"] in ("P()", "PartitionSpec()")
    for name in ("scan", "stepped"):
        assert r[name].startswith("ValueError: --batch-size 30 does not divide over 4 devices"), r[name]
        assert "pass --batch-size 28 or 32" in r[name]
    assert r["shard_batch"].startswith("ValueError: the batch size 6 does not divide over 4 devices")
    assert "JAX_NUM_CPU_DEVICES=5" in r["too_many"]


@pytest.mark.slow
def test_mesh_unet_batchnorm_restarts_and_ddpm():
    """The UNet with BatchNorm on 4 devices = one device (its gradient through convolutions of a
    batch-sharded input, and BatchNorm statistics of the global batch); EM's vmapped restarts on
    sharded data; DDPM with the batch sharded.

    The batch is sorted by label, so each device's quarter holds other digits: the statistics of one
    device's shard alone differ from the global batch's by far more than the tolerance.
    """
    r = _worker("unet_step,restarts,ddpm")
    _assert_steps_agree(r, ("unet",))
    assert r["unet_state_diff"] <= ATOL_MESH_F32
    assert r["unet_local_stats_diff"] > 100 * ATOL_MESH_F32, "the check cannot tell local from global stats"
    assert r["restarts_param_diff"] <= ATOL_MESH_F32 and r["restarts_loglik_diff"] <= ATOL_MESH_F32
    _assert_samplers_agree(r, ("ddpm",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(out: Path) -> list[dict]:
    port = _free_port()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    procs = []
    for pid in range(2):
        pin = ["taskset", "-c", str(cores[pid])] if len(cores) >= 2 and _has_taskset() else []
        env = _env(
            JAX_NUM_CPU_DEVICES="1",
            DLX_COORDINATOR=f"127.0.0.1:{port}",
            DLX_NUM_PROCESSES="2",
            DLX_PROCESS_ID=str(pid),
        )
        cmd = [*pin, sys.executable, str(WORKER), "two_process", str(out)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    return [json.loads((out / f"process{i}.json").read_text()) for i in range(2)]


def _has_taskset() -> bool:
    from shutil import which

    return which("taskset") is not None


def test_two_processes_train_and_em_like_one(tmp_path):
    """Two processes (one CPU device each, jax.distributed over 127.0.0.1), each feeding its own half
    of every global batch: one CNN train step and one EM step equal one process on the whole batch,
    and both processes hold the same numbers."""
    results = _two_processes(tmp_path)
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["joined"] and r["processes"] == 2 and r["devices"] == 2 for r in results)
    assert [r["rows"] for r in results] == [[0, 32], [32, 64]]
    assert results[0]["loss"] == results[1]["loss"]
    assert results[0]["params"] == results[1]["params"] and results[0]["em"] == results[1]["em"]

    ds = load_dataset("mnist-5k")
    x, y = to_float_images(ds.x_train[:64]), np.asarray(ds.y_train[:64], np.int32)
    order = np.argsort(y, kind="stable")
    optimizer = optax.sgd(0.1)
    state = training.init_state(cnn.init_params(jax.random.key(0)), optimizer)
    step = training.make_train_step(cnn.train_loss, optimizer)
    new_state, metrics = jax.jit(step)(jax.random.key(7), state, (x[order], y[order]))
    np.testing.assert_allclose(
        results[0]["loss"], float(metrics["loss"]), rtol=RTOL_MESH_F32, atol=ATOL_MESH_F32
    )
    for name, layer in new_state.params.items():
        for leaf, want in layer.items():
            got = np.asarray(results[0]["params"][name][leaf], np.float32)
            np.testing.assert_allclose(got, np.asarray(want), rtol=RTOL_MESH_F32, atol=ATOL_MESH_F32)

    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(0, 1, (600, 2)), rng.normal(4, 0.5, (200, 2))]).astype(np.float32)
    init = mixture.init_params(jax.random.key(0), data, k=2)
    em = mixture.em_step(data, init, reg_covar=1e-6)
    for field, want in em._asdict().items():
        got = np.asarray(results[0]["em"][field], np.float32)
        np.testing.assert_allclose(got, np.asarray(want), rtol=RTOL_MESH_F32, atol=ATOL_MESH_F32)


def test_one_device_mesh_is_bit_for_bit_no_mesh():
    """The one code path: on a one-device mesh (replicated state, sharding constraints) an epoch gives
    exactly the numbers of the same epoch without a mesh, scanned and stepped."""
    ds = load_dataset("mnist-5k")
    data = (to_float_images(ds.x_train[:256]), np.asarray(ds.y_train[:256], np.int32))
    optimizer = optax.adam(1e-3)
    step = training.make_train_step(cnn.train_loss, optimizer)
    mesh = training.data_mesh(1)
    for make in (
        lambda m: jax.jit(training.make_epoch_fn(step, batch_size=64, mesh=m)),
        lambda m: training.make_stepped_epoch_fn(step, batch_size=64, mesh=m),
    ):
        results = []
        for m in (None, mesh):
            state = training.init_state(cnn.init_params(jax.random.key(0)), optimizer)
            args = (jax.random.key(1), state, jax.tree_util.tree_map(jnp.asarray, data))
            if m is not None:
                args = training.replicate(args, m)
            results.append(make(m)(*args))
        (s0, m0), (s1, m1) = results
        for a, b in zip(
            jax.tree_util.tree_leaves((s0, m0)), jax.tree_util.tree_leaves((s1, m1)), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_data_mesh_rejects_bad_device_counts(bad):
    with pytest.raises(ValueError, match="num_devices"):
        training.data_mesh(bad)


def test_initialize_distributed_needs_all_three_settings(monkeypatch):
    for var in ("DLX_COORDINATOR", "DLX_NUM_PROCESSES", "DLX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert training.initialize_distributed() is False  # nothing asked: a single-process run
    with pytest.raises(ValueError, match="needs all three"):
        training.initialize_distributed("127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match="--process-id 2 is not in"):
        training.initialize_distributed("127.0.0.1:1234", 2, 2)
