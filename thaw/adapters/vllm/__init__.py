"""thaw for vLLM: ``attach(llm)`` returns a handle that snapshots and restores the engine.

```python
import os; os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM
from thaw.adapters.vllm import attach
llm = LLM(model=..., enable_prefix_caching=True)
h = attach(llm)          # right after creating the engine: records block tokens from now on
...                      # serve
h.snapshot("warm.thaw")
child = attach(LLM(model=..., enable_prefix_caching=True, load_format="dummy"))
child.restore("warm.thaw")   # weights, KV pages, prefix index, in-flight requests
```
"""

from .handle import VLLMHandle, attach
from .engine_access import SUPPORTED_RANGE, TESTED_VERSIONS

__all__ = ["attach", "VLLMHandle", "SUPPORTED_RANGE", "TESTED_VERSIONS"]
