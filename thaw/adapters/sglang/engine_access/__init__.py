"""How thaw reaches into SGLang: the one place that knows its internals, one module per part.
Read from the source of each supported release line (`RELEASES`: 0.5.14, which pins torch
2.11 and runs on the GPU box, and 0.5.20-0.5.21, which pin torch 2.13 and run on CPU); where
they differ, `internals()` says how. A release outside them, or one that drops what thaw
reads, is refused by name. Adapter modules reach SGLang's objects only through here.

- `releases`: what differs between the supported lines (`internals`, `RELEASES`), and the
  calls whose form depends on it (`radix_key`, `update_weights_from_tensor`, `req_kv`);
- `scheduler`: the `Scheduler`'s KV pool, model runner, live and retiring requests, and the
  KV slots a request holds;
- `tree_cores`: which tree core a radix cache has and how its nodes are read (legacy
  `RadixCache`, or `UnifiedRadixCache` with the Python or the Rust core), and the Rust
  core's walk of every device slot (`slot_walk`);
- `http_server`: whether this process is about to run SGLang's HTTP server, the plugin hook
  that hands thaw its app and the scheduler's RPC address before it serves, SGLang's admin
  auth level, and the scheduler's RPC socket (`SchedulerRPC`).
"""

from .http_server import (HTTP_SERVER_MODULE, HTTP_SETUP, SchedulerRPC, admin_endpoint, before_http_server_runs,
                          single_tokenizer, starting_http_server)
from .releases import (RELEASES, Internals, component_type, internals, internals_of, radix_key, release_parts, req_kv,
                       update_weights_from_tensor)
from .scheduler import (committed_tokens, kv_pool, live_requests, locked_slots, model_runner, request_slots,
                        running_requests)
from .tree_cores import (PYTHON_TREE_CORE, device_value, slot_walk, tree_core_backend, tree_root, unified_tree,
                         walks_nodes)

__all__ = [
    "HTTP_SERVER_MODULE", "HTTP_SETUP", "SchedulerRPC", "admin_endpoint", "before_http_server_runs", "single_tokenizer",
    "starting_http_server", "RELEASES", "Internals", "component_type", "internals", "internals_of", "radix_key",
    "release_parts", "req_kv", "update_weights_from_tensor", "committed_tokens", "kv_pool", "live_requests",
    "locked_slots", "model_runner", "request_slots", "running_requests", "PYTHON_TREE_CORE", "device_value",
    "slot_walk", "tree_core_backend", "tree_root", "unified_tree", "walks_nodes",
]
