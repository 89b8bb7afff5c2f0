"""thaw for SGLang: ``attach(engine)`` returns a handle that snapshots and restores it.

```python
import os; os.environ["SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND"] = "python"
import sglang
from thaw.adapters.sglang import attach
engine = sglang.Engine(model_path=...)
h = attach(engine)
...                        # serve
h.snapshot("warm.thaw")    # radix tree, KV pool pages, live requests, weights
child = attach(sglang.Engine(model_path=..., load_format="dummy"))
child.restore("warm.thaw")
```
The work runs inside SGLang's scheduler process, reached through the plugin thaw
registers (entry point group ``sglang.srt.plugins``) and ``Engine.collective_rpc``.
"""

from .handle import SGLangHandle, attach
from .engine_access import RELEASES

SUPPORTED_RANGES = tuple((lo, hi) for lo, hi, _ in RELEASES)  # [lo, hi) each
TESTED_VERSIONS = ("0.5.21 (CPU, torch_native attention, page size 1)",
                   "0.5.14 (CPU, torch_native attention, page size 1)")

__all__ = ["attach", "SGLangHandle", "SUPPORTED_RANGES", "TESTED_VERSIONS"]
