r"""The one training loop of every fit, and its data parallelism over ``torch.distributed``.

:func:`~pyro_cnf.fit_svi`, :func:`~pyro_cnf.fit_density` and :func:`~pyro_cnf.fit_flow_matching`
share it.

Every fit runs :func:`train`: a step computes the loss and its gradients, refuses a non-finite
loss or gradient before anything is updated (:class:`~pyro_cnf.FitError` names the step), applies
the optimizer, and keeps the history, a progress bar, validation with early stopping and an
exponential moving average of the parameters where the fit asks for them.

**Several processes.** Launched by ``torchrun`` with a process group initialised
(``torch.distributed.init_process_group("gloo")`` on CPU, ``"nccl"`` on GPUs), every fit is
data-parallel with nothing else to set: parameters start as rank 0's, each rank scores its own
disjoint shard of every minibatch (:func:`sharded_minibatches`; :class:`SubsampleShards` for a
model's subsampled plates in SVI), and the gradients are averaged by one all-reduce per step,
so every rank takes the same step and ends with the same parameters and history. ``batch_size``
is per process, as in ``DistributedDataParallel``: the global batch is
``world_size * batch_size``. Only rank 0 shows a progress bar. PyTorch's
``DistributedDataParallel`` wraps one ``nn.Module`` called once per step; a Pyro guide's
parameters live in the param store and are created lazily during the first step, and an ELBO
calls model and guide several times, hence this small replacement: one flat all-reduce of the
loss and every gradient.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = [
    "FitError",
    "Replicas",
    "SubsampleShards",
    "TrainingHistory",
    "sharded_minibatches",
    "train",
]


class FitError(RuntimeError):
    """A training step gave a non-finite loss or gradient; the parameters were not updated by it."""


@dataclass(kw_only=True)
class TrainingHistory:
    """What a fit did, step by step (the fields every fit shares).

    Attributes:
        losses: The training objective at every step (averaged over processes).
        val_steps: Steps after which the validation NLL was computed.
        val_nll: Validation NLL (nats per point) at those steps.
        val_train_time: Seconds spent in training steps up to each validation (validation time
            excluded), for time-to-accuracy comparisons.
        best_val_nll: Lowest validation NLL (``None`` without validation).
        best_step: Step of ``best_val_nll``; the parameters of that step are kept.
        num_steps: Training steps taken.
        stopped_early: Whether early stopping (or the callback) ended the run.
        train_time: Seconds spent in training steps.
        wall_time: Seconds in all, validation included.
        world_size: Processes that trained together (1 without ``torch.distributed``).
    """

    losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    val_train_time: list[float] = field(default_factory=list)
    best_val_nll: float | None = None
    best_step: int | None = None
    num_steps: int = 0
    stopped_early: bool = False
    train_time: float = 0.0
    wall_time: float = 0.0
    world_size: int = 1


@dataclass(frozen=True)
class Replicas:
    """This process's place among the processes training together.

    ``Replicas.current()`` reads the default ``torch.distributed`` process group; without one
    (the usual single process) it is ``Replicas(1, 0)`` and every method is a no-op.

    Attributes:
        world_size: Number of processes.
        rank: This process's index, ``0 <= rank < world_size``.

    Example:
        >>> replicas = Replicas.current()  # no process group here
        >>> replicas.world_size, replicas.rank, replicas.is_main
        (1, 0, True)
    """

    world_size: int = 1
    rank: int = 0

    @classmethod
    def current(cls) -> Replicas:
        """The default process group's size and this rank (``Replicas(1, 0)`` without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_world_size(), dist.get_rank())
        return cls()

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files and shows progress)."""
        return self.rank == 0

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (one collective)."""
        if self.world_size == 1 or not tensors:
            return
        import torch.distributed as dist

        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1) for t in tensors])
            dist.broadcast(flat, src=0)
            _unflatten_into(flat, list(tensors))

    def average_(self, loss: Tensor, params: Sequence[Tensor]) -> Tensor:
        """Average ``loss`` and the gradients of ``params`` over the ranks in one all-reduce.

        A parameter without a gradient on this rank counts as a zero gradient. Returns the
        averaged loss; the gradients are averaged in place.
        """
        if self.world_size == 1:
            return loss
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat(
            [loss.detach().reshape(1).to(grads[0].dtype if grads else loss.dtype)]
            + [g.reshape(-1) for g in grads]
        )
        dist.all_reduce(flat)
        flat /= self.world_size
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = g
        _unflatten_into(flat[1:], grads)
        return flat[0].to(loss.dtype)

    def decorrelate_rng(self) -> None:
        """Reseed each rank's torch RNG from a shared seed plus its rank (no-op for one process).

        Processes started by ``torchrun`` begin with the same torch RNG state; without this their
        particle draws would repeat each other's.
        """
        if self.world_size > 1:
            torch.manual_seed(self.shared_seed() + self.rank)

    def shared_seed(self) -> int:
        """A seed drawn from rank 0's torch RNG and given to every rank (for shared shuffles)."""
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.get_backend() == "nccl":  # NCCL moves CUDA tensors only
                seed = seed.to(torch.device("cuda", torch.cuda.current_device()))
            dist.broadcast(seed, src=0)
        return int(seed)


def _unflatten_into(flat: Tensor, tensors: list[Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def sharded_minibatches(
    num_points: int, batch_size: int, device: torch.device, replicas: Replicas | None = None
) -> Iterator[Tensor]:
    """Row indices of this rank's minibatches, endlessly, in shuffled epochs.

    One process: each epoch is a fresh ``torch.randperm`` (the global RNG) cut into batches of
    ``batch_size`` (the last partial batch dropped). Several processes: every rank draws the same
    permutation from a shared seed, cuts it into global batches of ``world_size * batch_size``
    rows and takes its own ``batch_size`` of each, so the ranks' rows are disjoint and together
    cover the epoch.

    Arguments:
        num_points: Rows in the data set.
        batch_size: Rows per step on this process.
        device: Device of the indices.
        replicas: The processes (default :meth:`Replicas.current`).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> batches = sharded_minibatches(6, 2, torch.device("cpu"))
        >>> sorted(torch.cat([next(batches) for _ in range(3)]).tolist())  # one epoch
        [0, 1, 2, 3, 4, 5]
    """
    replicas = replicas if replicas is not None else Replicas.current()
    global_batch = batch_size * replicas.world_size
    if num_points < global_batch:
        raise ValueError(
            f"the data has {num_points} points, fewer than world_size * batch_size = "
            f"{replicas.world_size} * {batch_size}; lower batch_size"
        )
    generator = None
    if replicas.world_size > 1:
        generator = torch.Generator().manual_seed(replicas.shared_seed())
    while True:
        if generator is None:
            order = torch.randperm(num_points, device=device)
        else:
            order = torch.randperm(num_points, generator=generator).to(device)
        for start in range(0, num_points - global_batch + 1, global_batch):
            mine = start + replicas.rank * batch_size
            yield order[mine : mine + batch_size]


class SubsampleShards(Messenger):
    """Give each rank a disjoint subsample of every subsampled ``pyro.plate``.

    Under this handler a plate ``pyro.plate(name, size, subsample_size=b)`` whose indices are
    not given draws them as :func:`sharded_minibatches` does: the ranks walk one shared
    permutation of ``range(size)`` per epoch, each taking ``b`` disjoint indices per draw. Pyro
    draws the indices inside its plate with ``torch.randperm``, independently per process, so
    without this the ranks would overlap. Plates replayed from the guide keep the guide's
    indices, and a plate with ``subsample_size`` equal to ``size`` (or a given ``subsample``) is
    left alone.

    Arguments:
        replicas: The processes.

    Example:
        >>> import pyro
        >>> seen = []
        >>> with SubsampleShards(Replicas.current()):  # one process: shuffled epochs
        ...     for _ in range(2):
        ...         with pyro.plate("data", 4, subsample_size=2) as idx:
        ...             seen += idx.tolist()
        >>> sorted(seen)  # two draws of 2 cover the 4 indices once
        [0, 1, 2, 3]
    """

    def __init__(self, replicas: Replicas) -> None:
        super().__init__()
        self.replicas = replicas
        self._streams: dict[str, Iterator[Tensor]] = {}

    def _pyro_sample(self, msg: Any) -> None:
        fn = msg["fn"]
        if not isinstance(fn, _Subsample) or msg["value"] is not None or msg["done"]:
            return
        if fn.subsample_size is None or fn.subsample_size >= fn.size:
            return
        stream = self._streams.get(msg["name"])
        if stream is None:
            stream = sharded_minibatches(fn.size, fn.subsample_size, fn.device, self.replicas)
            self._streams[msg["name"]] = stream
        msg["value"] = next(stream)


def train(
    gradients: Callable[[], tuple[Tensor, Sequence[Tensor]]],
    update: Callable[[Sequence[Tensor]], None],
    history: TrainingHistory,
    *,
    num_steps: int,
    desc: str,
    progress: bool = True,
    validate: Callable[[], float] | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    min_delta: float = 0.0,
    ema: tuple[Sequence[Tensor], float] | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, float], None] | None = None,
    callback: Callable[[Any], object] | None = None,
    params: Sequence[Tensor] = (),
    replicas: Replicas | None = None,
) -> None:
    """Run ``num_steps`` training steps, filling ``history``.

    A step: ``before_step(step)``; ``loss, params = gradients()`` (the loss, and the parameters
    whose ``.grad`` now holds its gradient); the loss and gradients averaged over the processes;
    a :class:`FitError` if either is not finite (nothing updated); ``update(params)``; the EMA
    and the history; ``after_step(step, loss)``; every ``eval_every`` steps (and the last) the
    validation (of the EMA parameters when kept), early stopping after ``patience``
    validations without an improvement larger than ``min_delta``; ``callback(history)``, whose
    ``True`` stops. At the end the parameters of the best validation are put back (without
    validation, the EMA parameters when kept).

    Parameters seen for the first time (``params`` before the loop, or those ``gradients``
    returns, e.g. a Pyro guide's lazily created ones) are set to rank 0's values before their
    first update, so the ranks start identical.

    Arguments:
        gradients: Computes the loss and its gradients; returns ``(loss, params)``.
        update: Applies the optimizer to ``params`` and zeroes their gradients.
        history: Filled in place (:class:`TrainingHistory` or a subclass).
        num_steps: Steps at most.
        desc: The progress bar's label, and the name of the fit in error messages.
        progress: Show a tqdm progress bar (rank 0 only).
        validate: Returns the validation NLL of the current parameters.
        eval_every: Steps between validations.
        patience: Validations without improvement before stopping (``None``: never).
        min_delta: Smallest decrease of the validation NLL that counts as an improvement.
        ema: ``(params, decay)``: keep an exponential moving average of these parameters.
        before_step: Called with the step index before its gradients.
        after_step: Called with the step index and its (averaged) loss.
        callback: Called with ``history`` after every step; returning ``True`` stops.
        params: Parameters known before the first step (broadcast from rank 0 at the start).
        replicas: The processes (default :meth:`Replicas.current`).

    Example:
        >>> x = torch.zeros(1, requires_grad=True)
        >>> optimizer = torch.optim.SGD([x], lr=0.1)
        >>> def gradients():
        ...     optimizer.zero_grad()
        ...     loss = (x - 3.0).pow(2).sum()
        ...     loss.backward()
        ...     return loss.detach(), [x]
        >>> history = TrainingHistory()
        >>> train(gradients, lambda params: optimizer.step(), history, num_steps=100, desc="toy",
        ...       progress=False)
        >>> round(float(x.detach()), 4), history.num_steps
        (3.0, 100)
    """
    from tqdm.auto import tqdm

    replicas = replicas if replicas is not None else Replicas.current()
    history.world_size = replicas.world_size
    seen: set[int] = set()

    def synchronize(new: Sequence[Tensor]) -> None:
        fresh = [p for p in new if id(p) not in seen]
        if fresh:
            replicas.broadcast_(fresh)
            seen.update(id(p) for p in fresh)

    synchronize(params)
    replicas.decorrelate_rng()
    ema_params = list(ema[0]) if ema is not None else []
    averaged = [p.detach().clone() for p in ema_params] if ema is not None else None
    ema_update = get_ema_multi_avg_fn(ema[1]) if ema is not None else None
    best_state: list[Tensor] | None = None
    best_for_patience, bad_evals = math.inf, 0
    start = time.perf_counter()
    bar = tqdm(
        range(num_steps), disable=not (progress and replicas.is_main), desc=desc, leave=False
    )
    for step in bar:
        tick = time.perf_counter()
        if before_step is not None:
            before_step(step)
        loss, step_params = gradients()
        step_params = list(step_params)
        synchronize(step_params)
        loss = replicas.average_(loss, step_params)
        value = float(loss)
        if not math.isfinite(value):
            raise FitError(
                f"{desc} step {step} gave a non-finite loss ({value}); the parameters were not "
                "updated by it. Lower the learning rate, standardize the data, or regularize the flow"
            )
        grads = [p.grad for p in step_params if p.grad is not None]
        if grads and not bool(torch.stack([g.norm() for g in grads]).isfinite().all()):
            raise FitError(
                f"{desc} step {step} gave non-finite gradients; the parameters were not updated "
                "by it. Lower the learning rate or regularize the flow"
            )
        update(step_params)  # finite gradients give finite Adam updates
        if averaged is not None and ema_update is not None:
            ema_update(averaged, [p.detach() for p in ema_params], None)
        history.train_time += time.perf_counter() - tick
        history.losses.append(value)
        history.num_steps = step + 1
        if after_step is not None:
            after_step(step, value)
        last = step == num_steps - 1
        if validate is not None and ((step + 1) % eval_every == 0 or last):
            current = [p.detach().clone() for p in ema_params or params]
            with torch.no_grad():
                if averaged is not None:
                    _copy(ema_params, averaged)
                nll = validate()
                evaluated = [p.detach().clone() for p in ema_params or params]
                _copy(ema_params or list(params), current)
            history.val_steps.append(step + 1)
            history.val_nll.append(nll)
            history.val_train_time.append(history.train_time)
            if history.best_val_nll is None or nll < history.best_val_nll:
                history.best_val_nll, history.best_step, best_state = nll, step + 1, evaluated
            if nll < best_for_patience - min_delta:
                best_for_patience, bad_evals = nll, 0
            else:
                bad_evals += 1
            bar.set_postfix(loss=f"{value:.4g}", val_nll=f"{nll:.4g}")
            if patience is not None and bad_evals >= patience:
                history.stopped_early = True
                break
        elif step % 10 == 0 or last:
            bar.set_postfix(loss=f"{value:.4g}")
        if callback is not None and callback(history) is True:
            break
    kept = ema_params or list(params)
    if best_state is not None:
        _copy(kept, best_state)
    elif averaged is not None:
        _copy(ema_params, averaged)
    history.wall_time = time.perf_counter() - start


def _copy(params: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    """Copy ``values`` into ``params`` in place (under ``no_grad``)."""
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
