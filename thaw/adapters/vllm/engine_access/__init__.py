"""How thaw reaches into a vLLM engine: the one place that knows vLLM's internals.

- `engine`: versions, finding the engine core's parts, KV layouts, identity, weights reload;
- `reload`: vLLM's layerwise weight reload, and undoing one that failed partway;
- `block_pool`: every call on vLLM's BlockPool, public and private;
- `hashing`: block hashes with the engine's own hash function, and its request hasher;
- `requests`: the client's request front, and what vLLM refuses when building a request;
- `queues`: the requests the scheduler holds, and what a snapshot of them would lose;
- `workers`: worker processes reached through `collective_rpc`;
- `thaw_state`: the attributes thaw keeps on vLLM's objects, in one place.

Adapter modules reach vLLM's internal objects only through here; they import vLLM's public
`SamplingParams` where they build requests.
"""

from .block_pool import PoolEdit, cached_blocks, counts, on_new_block_pool, unwrap_cache_full_blocks, wrap_cache_full_blocks
from .hashing import block_hasher, engine_block_hashes
from .engine import (CPU_ISA_LAYOUTS, add_engine_core_method, add_worker_method, SUPPORTED_RANGE, TESTED_VERSIONS, EngineParts, check_version, checkpoint_files,
                     engine_client, engine_identity, in_process_core, kv_layout, loads_dummy_weights, model_parameters,
                     model_path, reach,
                     reach_core, reload_weights, tp_size, vllm_version, worker_kv_caches, worker_reload_weights,
                     worker_tp_rank)
from .requests import NO_FRONT, OUTPUT_ONLY_SAMPLING_FIELDS, RequestFront, request_rejections
from .queues import (external_request_id, in_flight_requests, queued_requests, request_block_ids,
                     uncarried_request_features)
from .workers import RemoteWorkers
from . import thaw_state

__all__ = [
    "block_hasher", "engine_block_hashes", "PoolEdit", "cached_blocks", "counts", "on_new_block_pool", "unwrap_cache_full_blocks", "wrap_cache_full_blocks",
    "CPU_ISA_LAYOUTS", "add_engine_core_method", "add_worker_method", "SUPPORTED_RANGE", "TESTED_VERSIONS", "EngineParts", "check_version", "checkpoint_files",
    "engine_client", "engine_identity", "in_process_core", "kv_layout", "loads_dummy_weights", "model_parameters",
    "model_path", "reach",
    "reach_core", "reload_weights", "tp_size", "worker_tp_rank", "vllm_version", "worker_kv_caches", "worker_reload_weights", "NO_FRONT", "OUTPUT_ONLY_SAMPLING_FIELDS", "RequestFront",
    "external_request_id", "in_flight_requests", "queued_requests", "request_block_ids", "request_rejections", "uncarried_request_features", "RemoteWorkers", "thaw_state",
]
