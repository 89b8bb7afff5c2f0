"""A small paged-KV inference server on a `transformers` causal LM (CPU), with prefix caching.

KV lives in a page pool: per layer `[num_pages, 2, page_size, kv_heads, head_dim]` (K rows of
a page, then V rows). The prefix index maps (parent page, the page's tokens) to a page, so a
request reuses every whole page of its prompt that an earlier request computed. Requests run
one token per `step`; a request's whole pages are published to the index as they fill.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

ROOT = -1


@dataclass
class Request:
    rid: str
    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    seed: Optional[int] = None
    output: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    cache: Optional[DynamicCache] = None  # KV of every token processed so far
    pages: list[int] = field(default_factory=list)  # published pages, in token order
    generator: Optional[torch.Generator] = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def done(self) -> bool:
        return len(self.output) >= self.max_tokens


class PagedEngine:
    def __init__(self, model: str, page_size: int = 16, num_pages: int = 256,
                 dtype: str = "float32", load_format: str = "auto") -> None:
        self.model_dir, self.page_size, self.load_format = model, page_size, load_format
        self.dtype = getattr(torch, dtype)
        if load_format == "dummy":
            torch.manual_seed(1234)  # random weights: correct output later proves a restore
            self.model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), dtype=self.dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype)
        self.model.eval()
        cfg = self.model.config
        self.num_layers = cfg.num_hidden_layers
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.pool = torch.zeros(self.num_layers, num_pages, 2, page_size, self.kv_heads, self.head_dim,
                                dtype=self.dtype)
        self.free: list[int] = list(range(num_pages))
        self.index: dict[tuple, int] = {}  # (parent page, page tokens) -> page
        self.page_key: dict[int, tuple] = {}  # page -> its index key
        self.children: dict[int, int] = {}  # page -> number of child pages
        self.refs: dict[int, int] = {}  # page -> live requests using it
        self.last_use: dict[int, int] = {}
        self.clock = itertools.count()
        self.requests: dict[str, Request] = {}

    # -- the page pool and prefix index ----------------------------------------------------
    def match(self, tokens: list[int]) -> list[int]:
        """Pages holding the longest whole-page prefix of `tokens`, leaving >= 1 token."""
        p, pages, parent = self.page_size, [], ROOT
        for start in range(0, (len(tokens) - 1) // p * p, p):
            page = self.index.get((parent, tuple(tokens[start:start + p])))
            if page is None:
                break
            pages.append(page)
            parent = page
        return pages

    def evictable(self) -> list[int]:
        """Cached leaf pages no request uses, least recently used first."""
        leaves = [q for q in self.page_key if not self.children.get(q) and not self.refs.get(q)]
        return sorted(leaves, key=lambda q: self.last_use.get(q, 0))

    def allocate(self, n: int) -> list[int]:
        """`n` free pages, evicting unused cached leaves (repeatedly) if needed."""
        while len(self.free) < n:
            victims = self.evictable()
            if not victims:
                raise RuntimeError(f"out of KV pages: need {n}, {len(self.free)} free")
            for q in victims[: n - len(self.free)]:
                self.drop(q)
        out, self.free = self.free[:n], self.free[n:]
        return out

    def drop(self, page: int) -> None:
        key = self.page_key.pop(page)
        del self.index[key]
        if key[0] != ROOT:
            self.children[key[0]] -= 1
        self.free.append(page)

    def publish(self, parent: int, tokens: tuple, page: int) -> int:
        """Makes `page` (already filled) the cached page for `tokens` under `parent`; if the
        index already has one, frees `page` and returns the existing one."""
        key = (parent, tokens)
        if key in self.index:
            self.free.append(page)
            return self.index[key]
        self.index[key], self.page_key[page] = page, key
        if parent != ROOT:
            self.children[parent] = self.children.get(parent, 0) + 1
        self.last_use[page] = next(self.clock)
        return page

    # -- requests --------------------------------------------------------------------------
    def add_request(self, rid: str, prompt: list[int], max_tokens: int, temperature: float = 0.0,
                    seed: Optional[int] = None) -> Request:
        if rid in self.requests:
            raise ValueError(f"request {rid!r} already exists")
        req = Request(rid, list(prompt), max_tokens, temperature, seed)
        if seed is not None:
            req.generator = torch.Generator().manual_seed(seed)
        self.requests[rid] = req
        return req

    @torch.no_grad()
    def step(self) -> list[Request]:
        """One token for every live request; returns those that finished."""
        finished = []
        for req in list(self.requests.values()):
            if req.cache is None:
                self._prefill(req)
            else:
                out = self.model(torch.tensor([[req.output[-1]]]), past_key_values=req.cache, use_cache=True)
                req.output.append(self._sample(req, out.logits[0, -1]))
            self._publish_full_pages(req)
            if req.done:
                finished.append(self.requests.pop(req.rid))
                for q in req.pages:
                    self.refs[q] -= 1
        return finished

    def _prefill(self, req: Request) -> None:
        pages = self.match(req.prompt)
        for q in pages:
            self.refs[q] = self.refs.get(q, 0) + 1
            self.last_use[q] = next(self.clock)
        req.pages, req.cached_tokens = pages, len(pages) * self.page_size
        req.cache = DynamicCache(config=self.model.config)
        if pages:
            kv = self.pool[:, pages]  # [L, n, 2, P, H, D]
            for layer in range(self.num_layers):
                k = kv[layer, :, 0].reshape(-1, self.kv_heads, self.head_dim).transpose(0, 1)[None]
                v = kv[layer, :, 1].reshape(-1, self.kv_heads, self.head_dim).transpose(0, 1)[None]
                req.cache.update(k.contiguous(), v.contiguous(), layer)
        rest = torch.tensor([req.prompt[req.cached_tokens:]])
        out = self.model(rest, past_key_values=req.cache, use_cache=True)
        req.output.append(self._sample(req, out.logits[0, -1]))

    def _sample(self, req: Request, logits: torch.Tensor) -> int:
        if req.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / req.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=req.generator))

    def _publish_full_pages(self, req: Request) -> None:
        """Copies each newly filled whole page of processed tokens into the pool and index."""
        p = self.page_size
        processed = req.cache.get_seq_length()
        tokens = req.tokens
        while (len(req.pages) + 1) * p <= processed:
            start = len(req.pages) * p
            page = self.allocate(1)[0]
            for layer in range(self.num_layers):
                lay = req.cache.layers[layer]
                self.pool[layer, page, 0] = lay.keys[0, :, start:start + p].transpose(0, 1)
                self.pool[layer, page, 1] = lay.values[0, :, start:start + p].transpose(0, 1)
            parent = req.pages[-1] if req.pages else ROOT
            page = self.publish(parent, tuple(tokens[start:start + p]), page)
            self.refs[page] = self.refs.get(page, 0) + 1
            req.pages.append(page)

    def run(self, rids: Optional[set[str]] = None) -> dict[str, Request]:
        """Steps until the given requests (default: all) finish."""
        done: dict[str, Request] = {}
        while self.requests and (rids is None or not rids <= set(done)):
            done.update({r.rid: r for r in self.step()})
        return done
