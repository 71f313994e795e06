"""Training: the train state, jitted steps, the fit loop, checkpoints, data parallelism, sanity checks.

* :mod:`~jaxnet.train.state`: :class:`TrainState`, :func:`create_train_state`.
* :mod:`~jaxnet.train.step`: :func:`make_train_step`, :func:`make_eval_step`, :func:`batches`.
* :mod:`~jaxnet.train.fit`: :func:`fit` -> :class:`FitResult`, :func:`evaluate`; callbacks end a
  run early by raising :class:`StopTraining`.
* :mod:`~jaxnet.train.averaging`: :func:`ema_init`, :func:`ema_update`, :func:`polyak_average`
  (parameter averaging), :func:`ensemble_predict`, :func:`evaluate_ensemble` (model ensembles).
* :mod:`~jaxnet.train.checkpoint`: :func:`save_checkpoint`, :func:`load_checkpoint`, :class:`CheckpointError`.
* :mod:`~jaxnet.train.parallel`: :func:`make_mesh`, :func:`shard_batch`, :func:`replicate`.
* :mod:`~jaxnet.train.sanity`: :func:`initial_loss_check`, :func:`overfit_small_subset`.
* :mod:`~jaxnet.train.tbptt`: :func:`train_tbptt` -> :class:`TBPTTResult` (truncated BPTT over long
  streams, the state carried and cut with ``stop_gradient`` at chunk boundaries),
  :func:`make_tbptt_step`, :func:`make_tbptt_eval`, :func:`evaluate_bpc`.
* :mod:`~jaxnet.train.stats`: :func:`make_stats_step` (per-layer grad/param norms, update ratios,
  activation statistics), :func:`update_ratios`.
"""

from jaxnet.train.averaging import (
    ema_decay_at,
    ema_init,
    ema_update,
    ensemble_member_probs,
    ensemble_predict,
    evaluate_ensemble,
    polyak_average,
    polyak_update,
)
from jaxnet.train.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from jaxnet.train.fit import FitResult, StopTraining, evaluate, fit
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
from jaxnet.train.stats import flatten_paths, make_stats_step, param_norms, update_ratios
from jaxnet.train.tbptt import TBPTTResult, evaluate_bpc, make_tbptt_eval, make_tbptt_step, train_tbptt
from jaxnet.train.step import batches, make_eval_step, make_train_step, masked_mean, num_batches, per_example_loss

__all__ = [
    "TrainState", "create_train_state",
    "make_train_step", "make_eval_step", "batches", "num_batches", "masked_mean", "per_example_loss",
    "FitResult", "fit", "evaluate", "StopTraining",
    "ema_init", "ema_update", "ema_decay_at", "polyak_update", "polyak_average",
    "ensemble_predict", "ensemble_member_probs", "evaluate_ensemble",
    "CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint",
    "make_mesh", "data_sharding", "replicated_sharding", "replicate", "shard_batch",
    "check_batch_divisible",
    "initial_loss_check", "overfit_small_subset",
    "make_stats_step", "update_ratios", "param_norms", "flatten_paths",
    "make_tbptt_step", "make_tbptt_eval", "evaluate_bpc", "train_tbptt", "TBPTTResult",
]
