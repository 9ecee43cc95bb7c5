"""The end of a distributed (torchrun) run: wait for every rank, then let the process exit without an abort."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["shutdown_distributed"]

# the last barrier's work of this process, kept until the interpreter exits (see shutdown_distributed)
_FINAL_BARRIER: list = []


def shutdown_distributed() -> None:
    """Wait for every rank, then destroy the default process group; a no-op outside a distributed run.

    Use it as the last step of a torchrun workflow (the bundles' ``multi_gpu_train.json`` ``finalize``) instead of
    ``torch.distributed.barrier()`` followed by ``torch.distributed.destroy_process_group()``. With the gloo backend
    (CPU) that pair lets the process abort at exit now and then with "terminate called without an active
    exception" (SIGABRT, torchrun reports the rank as failed) after training finished and saved:

    - gloo runs each collective on a worker thread, and the thread drops its reference to a finished collective
      only after the caller has been told it finished. A barrier's work also holds the collectives that were
      still in flight when it was issued (here the metric all-gathers of the last validation).
    - ``destroy_process_group`` does not stop those threads: the process group lives on inside
      ``DistributedDataParallel``.
    - When the thread's reference is the last one, it frees those collectives' tensors. Tensors created in Python
      need the GIL to be freed, and if the interpreter is already shutting down, Python ends the thread
      (``pthread_exit``) inside a ``noexcept`` destructor, which is ``std::terminate``. How often depends on
      thread scheduling: rare on an idle machine, frequent under load.

    Here the final barrier's work is kept referenced by this module until the interpreter exits, so the reference
    the gloo thread drops right after the barrier is not the last one: the barrier and the collectives it holds are
    freed by the main thread, which holds the GIL. Collectives that finished before the barrier was issued were
    already freed: issuing it waits for them with the GIL released.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    work = dist.barrier(async_op=True)
    work.wait()
    _FINAL_BARRIER[:] = [work]
    dist.destroy_process_group()
