"""thaw for vLLM: ``attach(engine)`` returns a handle that snapshots and restores the engine:
an `LLM` (in-process or vLLM's default multiprocess mode) or an `AsyncLLM` (awaitable
handle); a running `vllm serve` is reached over HTTP (`thaw.adapters.vllm.server`).

```python
from vllm import LLM
from thaw.adapters.vllm import attach
llm = LLM(model=..., enable_prefix_caching=True)
h = attach(llm)          # right after creating the engine: records block tokens from now on
...                      # serve
h.snapshot("warm.thaw")
child = attach(LLM(model=..., enable_prefix_caching=True, load_format="dummy"))
child.restore("warm.thaw")   # weights, KV pages, prefix index (and in-flight requests in-process)
```
"""

from .handle import VLLMHandle, attach
from .remote import AsyncVLLMHandle, RemoteVLLMHandle
from .engine_access import SUPPORTED_RANGE, TESTED_VERSIONS

__all__ = ["attach", "VLLMHandle", "RemoteVLLMHandle", "AsyncVLLMHandle", "SUPPORTED_RANGE", "TESTED_VERSIONS"]
