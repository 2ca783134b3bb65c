"""The processes of one job: a single process, or the ranks of ``accelerate launch`` / ``torchrun``.

The process group stays open for the life of the process (a job may run twice in one process) and
is closed before the interpreter tears down: a gloo process that exits with its group still open
can abort in that teardown (SIGABRT: tensors held by gloo's worker threads are freed after Python
is gone), failing a run whose work was all done.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Protocol


class Processes(Protocol):
    """What a job needs from a process group (one process, or ``accelerate launch``)."""

    index: int
    count: int
    device: str | None  # this process's accelerator ("cuda:1"), None when not launched

    def split(self, items: list) -> list: ...

    def wait(self) -> None: ...

    def gather(self, obj: Any) -> list: ...

    def close(self) -> None: ...


class SingleProcess:
    """No splitting: this process does every item."""

    index = 0
    count = 1
    device = None

    def split(self, items: list) -> list:
        return list(items)

    def wait(self) -> None:
        pass

    def gather(self, obj: Any) -> list:
        return [obj]

    def close(self) -> None:
        pass


class AccelerateProcesses:
    """The processes of ``accelerate launch``, through ``accelerate.PartialState``.

    When this object opens a gloo process group (processes on the CPU), it closes it at exit
    (``atexit``, which runs while the interpreter is whole) or at ``close()``, whichever comes
    first. A group the caller set up before stays the caller's to close.
    """

    def __init__(self, cpu: bool = False) -> None:
        import torch.distributed as dist
        from accelerate import PartialState

        before = dist.is_available() and dist.is_initialized()
        self.state = PartialState(cpu=cpu)  # cpu=True: gloo processes on machines without GPUs
        # gloo is what aborts at exit; NCCL's destroy waits for every rank (a rank that failed alone
        # would hang in it), and torchrun tears an NCCL job down anyway
        opened = not before and dist.is_available() and dist.is_initialized()
        self.closes_at_exit = opened and dist.get_backend() == "gloo"
        self.index = self.state.process_index
        self.count = self.state.num_processes
        self.device = str(self.state.device)
        if self.closes_at_exit:
            atexit.register(self.close)

    def split(self, items: list) -> list:
        with self.state.split_between_processes(list(items)) as part:
            return list(part)

    def wait(self) -> None:
        self.state.wait_for_everyone()

    def gather(self, obj: Any) -> list:
        if self.count == 1:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def close(self) -> None:
        """Destroy the process group if this object opened it: the last distributed step of a process
        (accelerate's shared state still counts the processes afterwards)."""
        if self.closes_at_exit:
            self.closes_at_exit = False
            atexit.unregister(self.close)
            self.state.destroy_process_group()


def launched() -> bool:
    """True under ``accelerate launch`` / ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_processes(cpu: bool | None = None) -> Processes:
    """``accelerate launch`` processes when launched that way, else a single process.

    ``cpu`` None: gloo on the CPU when this machine has no CUDA device.
    """
    if launched():
        import torch

        return AccelerateProcesses(cpu=not torch.cuda.is_available() if cpu is None else cpu)
    return SingleProcess()
