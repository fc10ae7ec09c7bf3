"""Parameter files: one pytree of arrays in one orbax folder, written atomically and read back checked.

Model modules (e.g. :func:`dlx_jax.cnn.load_params`) read their trained weights through this module
without depending on the training loop; :mod:`dlx_jax.training` re-exports both functions.

.. code-block:: python

    params_io.save_params("out/params", params)                 # a folder, never half-written
    params = params_io.load_params("out/params", like=params)   # checked against ``like``

The folder is orbax's ``StandardCheckpointer`` layout. :func:`load_params` compares every stored
leaf's path, shape and dtype with the template ``like`` before reading any array, so the parameters
of another model (or of other settings) are one ``ValueError`` instead of a restore error.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["load_params", "save_params"]


def save_params(path: str | Path, params: Any, *, overwrite: bool = False) -> None:
    """Write a parameter pytree with orbax (``StandardCheckpointer``) into the folder ``path``.

    The folder is written beside ``path`` first and renamed into place, so ``path`` never holds a
    half-written pytree. In a multi-process run the calling process alone writes its copy of the
    (replicated) parameters, e.g. process 0 the step's outputs.

    Raises:
        ValueError: ``path`` exists and ``overwrite`` is false.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; pass overwrite=True or choose another folder")
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    options = {}
    if jax.process_count() > 1:  # a multi-process run: this process alone writes its host copy
        me = jax.process_index()
        params = jax.tree_util.tree_map(np.asarray, params)
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}
        )
    with ocp.StandardCheckpointer(**options) as ckpt:
        ckpt.save(tmp, params)
        ckpt.wait_until_finished()
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def load_params(path: str | Path, like: Any) -> Any:
    """Read parameters written by :func:`save_params`, shaped like the pytree ``like``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the stored arrays do not match ``like``'s structure, shapes or dtypes.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no parameters at {path}")
    with ocp.StandardCheckpointer() as ckpt:
        stored = ckpt.metadata(path)
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    got = {
        jax.tree_util.keystr(p): (tuple(m.shape), np.dtype(m.dtype))
        for p, m in jax.tree_util.tree_leaves_with_path(stored)
    }
    want = {
        jax.tree_util.keystr(p): (tuple(np.shape(a)), np.dtype(a.dtype))
        for p, a in jax.tree_util.tree_leaves_with_path(like)
    }
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        first = diff[0]
        raise ValueError(
            f"the parameters at {path} do not match the expected model: {first} is stored as "
            f"{got.get(first, 'missing')} but expected {want.get(first, 'absent')} ({len(diff)} entries "
            "differ); they were saved for another model or with other settings"
        )
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(path, abstract)
    return params
