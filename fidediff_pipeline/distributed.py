"""Running ``fidediff deblur`` and ``fidediff eval`` over several processes (and devices) with Accelerate.

``accelerate launch`` (or ``torchrun``, or ``mpirun``) starts the same command once per process; each process
finds every input the same way, takes its own contiguous share of the sorted work list
(``PartialState.split_between_processes``), runs the pipeline on its own device, and writes its own outputs.
The per-file results are gathered with ``accelerate.utils.gather_object`` and the main process writes the one
combined report.

A plain run (one process) never imports accelerate: :func:`process_state` returns ``None`` and the commands take
their single-process path unchanged. Accelerate picks the backend: gloo for processes on the CPU, NCCL on GPUs.

Example (two GPUs, or two CPU processes with ``ACCELERATE_USE_CPU=1``)::

    accelerate launch --multi_gpu --num_processes 2 -m fidediff_pipeline.cli deblur photos/ -o restored/
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

# What launchers export: torchrun (``accelerate launch --multi_gpu``) sets WORLD_SIZE/RANK, MPI sets the others.
# Accelerate's PartialState reads the same variables.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _first_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    return default


def launched_processes() -> int:
    """How many processes the launcher started for this command (1 for a plain run), read from the environment.

    Example:
        >>> launched_processes()  # a plain ``python`` / ``fidediff`` run
        1
    """
    return max(_first_int(WORLD_SIZE_VARIABLES, 1), 1)


def is_main_process() -> bool:
    """True for the launcher's process 0 (and for a plain run); needs no process group."""
    return _first_int(RANK_VARIABLES, 0) == 0


def process_state():
    """Accelerate's ``PartialState`` when the command was launched as several processes, else ``None``.

    ``None`` keeps a single-process run on exactly the code path it had before distribution existed.
    """
    count = launched_processes()
    if count < 2:
        return None
    try:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env
    except ImportError:
        raise ValueError(f"the launcher started {count} processes, but accelerate is not installed; "
                         "pip install accelerate, or run one process") from None
    import torch

    # As accelerate's own Accelerator does: ACCELERATE_USE_CPU=1 puts the processes on the CPU (gloo). Without
    # it PartialState only goes multi-process on an accelerator, so a machine with none uses the CPU as well.
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes != count:
        raise ValueError(f"the launcher started {count} processes, but accelerate set up {state.num_processes} "
                         f"on {state.device} (distributed type {state.distributed_type}); "
                         "to run the processes on the CPU, set ACCELERATE_USE_CPU=1")
    return state


def process_device(state, requested: str | None):
    """The device this process runs the pipeline on: its own one (``state.device``) unless ``--device cpu``.

    ``--device auto`` and ``--device cuda`` mean this process's GPU (``cuda:<local rank>``); a fixed
    ``cuda:N`` would put every process on one GPU, so it is refused with a one-line reason.
    """
    from .hub.loading import resolve_device

    own = state.device
    if requested in (None, "auto"):
        return own
    resolved = resolve_device(requested)  # unknown names / no CUDA: the usual one-line errors
    if resolved.type == "cpu":
        return resolved
    if resolved.type != own.type:
        raise ValueError(f"--device {requested}: the launcher put this run on {own.type} (e.g. ACCELERATE_USE_CPU=1); "
                         f"use --device auto")
    if resolved.index is not None and state.num_processes > 1:
        raise ValueError(f"--device {requested} with {state.num_processes} processes: each process takes its own "
                         f"device ({own} here); use --device auto or --device {resolved.type}")
    return own


def share_of(state, items: list) -> list:
    """This process's contiguous share of ``items`` (same list in every process); empty for an idle process.

    Contiguous shares in process order mean that the gathered results come back in the order of ``items``.
    """
    with state.split_between_processes(list(items)) as share:
        return list(share)


def gather_lists(items: list) -> list:
    """Every process's ``items`` concatenated in process order, returned to every process (accelerate's
    ``gather_object`` over the process group PartialState set up)."""
    from accelerate.utils import gather_object

    return list(gather_object(list(items)))


@contextlib.contextmanager
def own_share(state) -> Iterator[None]:
    """Mark errors raised while this process works on its own share, so that the command line prints them.

    An error raised before the work is split (a missing input, a bad flag) is the same in every process and is
    printed once, by the main process (see :func:`should_print_error`); one raised here is this process's own.
    """
    try:
        yield
    except Exception as err:
        err.fidediff_process = f"process {state.process_index} of {state.num_processes}"
        raise


def should_print_error(err: BaseException) -> bool:
    """Whether this process prints ``err``: the main process always, the others only errors of their own share."""
    return is_main_process() or bool(getattr(err, "fidediff_process", None))


def error_prefix(err: BaseException) -> str:
    """``"process 1 of 2: "`` for an error of one process's share, else ``""``."""
    label = getattr(err, "fidediff_process", None)
    return f"{label}: " if label else ""


def close_process_group(finished: bool) -> None:
    """End a distributed run's process group; a no-op for a plain run (no process group was ever set up).

    After a command that ``finished`` (returned, whatever its exit code) every process first waits for the others:
    a process that exits while another is still completing its last collective closes the gloo connections under
    it, and the other process aborts (SIGABRT) instead of exiting cleanly. After an error no process waits: the
    others may never reach the barrier.
    """
    import sys

    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()
