"""thaw's ``vllm.general_plugins`` entry point, run by vLLM in each of its processes at start.

`register` makes every block pool that vLLM builds afterwards carry a token recorder from
its first cached block, so `attach` at any time can snapshot every cached block. It only
records (block hash -> tokens) and never changes what the engine computes or caches. It
also adds the `thaw_call` utility method to vLLM's EngineCore (see `core_ops`), which
is how a multiprocess `LLM`, an `AsyncLLM` and `vllm serve` reach thaw in the core's
process. vLLM may call it more than once per process; it installs once.
"""

from __future__ import annotations


def register() -> None:
    from . import core_ops, worker_ops
    from .engine_access import on_new_block_pool
    from .recorder import BlockTokenRecorder

    core_ops.install()
    worker_ops.install()
    on_new_block_pool("thaw-recorder", lambda pool: BlockTokenRecorder(
        pool, pool.hash_block_size, since_pool_start=True))
