"""The book's own numbers and small counterparts of its scripts, shared by steps and notebooks.

*Deep Learning from Scratch 5* ships scripts (``stepNN/*.py``) and notebooks with saved outputs
(``notebooks/NN_*.ipynb``, repository ``oreilly-japan/deep-learning-from-scratch-5``, MIT). This module
holds what they print (:data:`PRINTED`, copied from the notebooks' saved outputs, full precision) and
the project's counterparts of the scripts that print values rather than train a model:
``step03/numpy_basis.py`` and ``numpy_matrix.py`` (:func:`numpy_matrix_values`), ``step05``'s KL cell
(:func:`kl_values`), ``step06/vision.py`` (:func:`vision_values`), ``step03/plot_3d.py``
(:func:`plot_3d_figure`). It also reads a step's ``--data`` file (:func:`load_file`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import distributions
from dlx_jax.data import load_dataset, load_table
from experiments._outputs import StepOutput
from experiments._plots import plt

__all__ = [
    "PRINTED",
    "categorical_kl",
    "kl_values",
    "load_file",
    "numpy_matrix_values",
    "plot_3d_figure",
    "vision_values",
]

# What the book's notebooks print (saved outputs of notebooks/NN_*.ipynb at the vendored commit).
PRINTED: dict[str, object] = {
    # 02_mle.ipynb, cell 10 (step02/prob.py): norm.cdf under the MLE fit of height.txt
    "step02_p_le_160": 0.004271406830855,
    "step02_p_gt_180": 0.06541774339950823,
    "step02_shape": (25000,),
    # 03_multi_normal.ipynb, cells 4 and 6 (numpy_basis.py, numpy_matrix.py)
    "step03_dot": 32,
    "step03_matmul": ((19, 22), (43, 50)),
    "step03_det": -1.9999999999999971,  # np.linalg.det([[3, 4], [5, 6]]): −2 up to LU rounding
    "step03_inverse": ((-6.0, 2.0), (4.0, -1.0)),
    "step03_mvn_pdf": 0.013064233284684921,  # N(x=(0, 0) | μ=(1, 2), Σ=I)
    "step03_shape": (25000, 2),
    # 05_em.ipynb, cell 4: KL(p || q) for p = (0.7, 0.3) and q = (0.6, 0.4), (0.2, 0.8), (0.7, 0.3)
    "step05_kl": (0.02160085414354654, 0.5826853020432394, 0.0),
    # 05_em.ipynb, cell 6 (step05/em.py): the mean log-likelihood printed at each EM iteration
    "step05_em_log_likelihood": (-16.538, -4.415, -4.357, -4.302, -4.245, -4.200, -4.164, -4.156, -4.155),
    # 06_pytorch.ipynb, cell 2: y = 3x² at x = 5 and its gradient
    "step06_y": 75.0,
    "step06_grad": 30.0,
    # 06_pytorch.ipynb, cell 4 (step06/gradient.py): gradient at (0, 2), then (x0, x1) every 1,000 steps
    "step06_rosenbrock_grad": (-2.0, 400.0),
    "step06_rosenbrock_every_1000": (
        (0.0, 2.0),
        (0.6815015077590942, 0.46292299032211304),
        (0.8253857493400574, 0.6804871559143066),
        (0.8942827582359314, 0.7992911338806152),
        (0.9331904053688049, 0.8705660700798035),
        (0.9568046927452087, 0.9152978658676147),
        (0.9716982245445251, 0.9440822601318359),
        (0.9813036918640137, 0.9628812670707703),
        (0.98758465051651, 0.9752733111381531),
        (0.9917276501655579, 0.983490526676178),
        (0.9944759607315063, 0.9889602065086365),  # after the 10,000th step
    ),
    # 06_pytorch.ipynb, cell 6 (regression.py): the fit after 100 steps (torch.manual_seed(0) data)
    "step06_linreg_W": 2.2863590717315674,
    "step06_linreg_b": 5.3144850730896,
    # 06_pytorch.ipynb, cell 8 (neuralnet.py): the loss after 10,000 steps (printed every 1,000)
    "step06_mlp_final_loss": 0.07945814728736877,
    # 06_pytorch.ipynb, cell 10 (vision.py): full MNIST's training set
    "step06_vision_size": 60000,
    "step06_vision_first_label": 5,
    "step06_vision_shape": (1, 28, 28),  # torch's ToTensor: channels first
    "step06_vision_batch_shape": (32, 1, 28, 28),
    # 07_vae.ipynb / 08_hvae.ipynb: the book loss per image after epoch 30 (full MNIST)
    "step07_final_loss": 38.60076022338867,
    "step08_final_loss": 38.85786658935547,
    # 09_diffusion.ipynb: gaussian_noise.py's image shape; diffusion_model.py's loss after epoch 10
    "step09_flower_shape": (64, 64, 3),
    "step09_final_loss": 0.018106602346782744,
    # 10_diffusion2.ipynb: cell 2 (conditional.py) and cell 4 (the classifier_free_guidance.py cell,
    # which as saved trains without dropping labels: a second conditional run; the script itself, which
    # drops labels with probability 0.1, has no printed loss). First and last epoch.
    "step10_conditional_losses": (0.049074412559840214, 0.01775241631871538),
    "step10_cfg_cell_losses": (0.0506180353931336, 0.017478595573161202),
}


def load_file(data: str, *, ncols: int, names: Mapping[str, object]) -> np.ndarray:
    """A step's ``--data`` that is not one of its data set ``names``: a file of numbers.

    Args:
        data: the path (``./book`` reads a file named like a data set).
        ncols: (static) columns the file must have.
        names: the step's data set names, listed when the file does not exist.

    Returns:
        The float64 sample, ``(n,)`` or ``(n, ncols)``.

    Raises:
        FileNotFoundError: neither a name nor an existing file (the message lists the names).
        ValueError: a bad file (see :func:`dlx_jax.data.load_table`).
    """
    try:
        return load_table(data, ncols=ncols)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}, or one of the data set names: {', '.join(names)}") from None


def numpy_matrix_values() -> dict[str, object]:
    """``step03/numpy_basis.py`` and ``numpy_matrix.py``'s printed values, computed with ``jax.numpy``
    in float64: a dot product, a matrix product, a determinant, an inverse and the normal density
    N(x = (0, 0) | μ = (1, 2), Σ = I) through :func:`dlx_jax.distributions.mvn_pdf`."""
    with jax.enable_x64(True):
        a, b = jnp.array([1.0, 2.0, 3.0]), jnp.array([4.0, 5.0, 6.0])
        m1, m2 = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([[5.0, 6.0], [7.0, 8.0]])
        inv = jnp.linalg.inv(jnp.array([[0.5, 1.0], [2.0, 3.0]]))
        pdf = distributions.mvn_pdf(jnp.zeros(2), jnp.array([1.0, 2.0]), jnp.eye(2))
        return {
            "book_dot": float(a @ b),
            "book_matmul": np.asarray(m1 @ m2).tolist(),
            "book_det": float(jnp.linalg.det(jnp.array([[3.0, 4.0], [5.0, 6.0]]))),
            "book_inverse": np.asarray(inv).tolist(),
            "book_mvn_pdf": float(pdf),
        }


def categorical_kl(p: jax.Array, q: jax.Array) -> jax.Array:
    """KL(p ‖ q) = Σ_k p_k log(p_k / q_k) of categorical distributions over the last axis.

    Terms with ``p_k = 0`` are 0 (the limit of p log p), so ``q_k = 0`` only matters where ``p_k > 0``.
    """
    terms = jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(q)), 0.0)
    return jnp.sum(terms, axis=-1)


def kl_values() -> list[float]:
    """The KL cell of notebook 05: KL((0.7, 0.3) ‖ q) for q = (0.6, 0.4), (0.2, 0.8), (0.7, 0.3), float64."""
    with jax.enable_x64(True):
        p = jnp.array([0.7, 0.3])
        qs = jnp.array([[0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
        return [float(v) for v in categorical_kl(p, qs)]


def vision_values(dataset: str = "mnist-5k") -> tuple[dict[str, object], np.ndarray]:
    """``step06/vision.py``'s printed facts about a dataset: size, first image's shape and label, and
    the shape of one batch of 32 (channels last, as ``dlx_jax`` stores images). Returns the metrics and
    the first training image (uint8 28 × 28)."""
    data = load_dataset(dataset)
    first = data.x_train[0]
    batch = data.x_train[:32].astype(np.float32)[..., None] / 255.0  # what a float32 NHWC batch looks like
    return {
        "vision_dataset": dataset,
        "vision_size": int(data.x_train.shape[0]),
        "vision_first_label": int(data.y_train[0]),
        "vision_image_shape": list(first.shape),
        "vision_batch_shape": list(batch.shape),
    }, first


def plot_3d_figure(out: StepOutput) -> None:
    """``step03/plot_3d.py``: z = x² + y² as a 3-D surface on the book's 5 × 5 integer grid, and its
    contours on ``arange(-2, 2, 0.1)``."""
    xs, ys = np.meshgrid(np.arange(-2, 3), np.arange(-2, 3))
    fig = plt.figure(figsize=(11, 4.5))
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax3.plot_surface(xs, ys, xs**2 + ys**2, cmap="viridis")
    ax3.set(title="z = x² + y² on a 5 × 5 grid", xlabel="x", ylabel="y", zlabel="z")
    fine = np.arange(-2, 2, 0.1)
    fx, fy = np.meshgrid(fine, fine)
    ax = fig.add_subplot(1, 2, 2)
    ax.contour(fx, fy, fx**2 + fy**2)
    ax.set(title="its contours (step 0.1)", xlabel="x", ylabel="y")
    ax.set_aspect("equal")
    out.figure(fig, "book_plot_3d")
