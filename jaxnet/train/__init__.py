"""Training: the train state, jitted steps, the fit loop, checkpoints, data parallelism, sanity checks.

* :mod:`~jaxnet.train.state`: :class:`TrainState`, :func:`create_train_state`.
* :mod:`~jaxnet.train.step`: :func:`make_train_step`, :func:`make_eval_step`, :func:`batches`.
* :mod:`~jaxnet.train.fit`: :func:`fit` -> :class:`FitResult`, :func:`evaluate`.
* :mod:`~jaxnet.train.checkpoint`: :func:`save_checkpoint`, :func:`load_checkpoint`, :class:`CheckpointError`.
* :mod:`~jaxnet.train.parallel`: :func:`make_mesh`, :func:`shard_batch`, :func:`replicate`.
* :mod:`~jaxnet.train.sanity`: :func:`initial_loss_check`, :func:`overfit_small_subset`.
"""

from jaxnet.train.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from jaxnet.train.fit import FitResult, evaluate, fit
from jaxnet.train.parallel import (
    check_batch_divisible,
    data_sharding,
    make_mesh,
    replicate,
    replicated_sharding,
    shard_batch,
)
from jaxnet.train.sanity import initial_loss_check, overfit_small_subset
from jaxnet.train.state import TrainState, create_train_state
from jaxnet.train.step import batches, make_eval_step, make_train_step, masked_mean, num_batches, per_example_loss

__all__ = [
    "TrainState", "create_train_state",
    "make_train_step", "make_eval_step", "batches", "num_batches", "masked_mean", "per_example_loss",
    "FitResult", "fit", "evaluate",
    "CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint",
    "make_mesh", "data_sharding", "replicated_sharding", "replicate", "shard_batch",
    "check_batch_divisible",
    "initial_loss_check", "overfit_small_subset",
]
