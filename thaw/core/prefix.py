"""The prefix index: a tree keyed by token ids whose nodes own KV pages.

Each node extends its parent by ``len(tokens)`` tokens, a whole number of pages, and
names the snapshot pages (rows of every layer's KV) that hold those tokens, in order.
Children of one parent never start with the same first page of tokens under the same
extra key. Extra keys (LoRA adapter, cache salt, multimodal hashes) separate otherwise
equal token sequences; a node inherits its parent's key unless it sets its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

from .errors import SchemaError

ROOT = -1


@dataclass
class PrefixNode:
    parent: int
    tokens: list[int]
    pages: list[int]
    extra_key: Optional[str] = None


@dataclass
class PrefixTree:
    page_size: int
    nodes: list[PrefixNode] = field(default_factory=list)

    def add(self, parent: int, tokens: list[int], pages: list[int],
            extra_key: Optional[str] = None) -> int:
        """Appends a node under `parent` (ROOT for the top) and returns its id."""
        self.nodes.append(PrefixNode(parent, list(tokens), list(pages), extra_key))
        return len(self.nodes) - 1

    def add_path(self, tokens: list[int], pages: list[int], extra_key: Optional[str] = None) -> int:
        """Inserts a full-page token path, one node per page, sharing existing nodes."""
        p = self.page_size
        if len(tokens) != len(pages) * p:
            raise SchemaError(f"prefix path: {len(tokens)} tokens for {len(pages)} pages of {p}")
        children = self._children_index()
        parent = ROOT
        for i, page in enumerate(pages):
            key = (parent, tuple(tokens[i * p:(i + 1) * p]), extra_key)
            node = children.get(key)
            if node is None:
                node = self.add(parent, tokens[i * p:(i + 1) * p], [page], extra_key)
                children[key] = node
            parent = node
        return parent

    def _children_index(self) -> dict:
        keys = self.keys()
        return {(n.parent, tuple(n.tokens[: self.page_size]), keys[i]): i
                for i, n in enumerate(self.nodes)}

    def keys(self) -> list[Optional[str]]:
        """The effective extra key of every node, in one pass (parents come first)."""
        out: list[Optional[str]] = []
        for n in self.nodes:
            out.append(n.extra_key if n.extra_key is not None
                       else (out[n.parent] if n.parent != ROOT else None))
        return out

    def key_of(self, node: int) -> Optional[str]:
        while node != ROOT:
            n = self.nodes[node]
            if n.extra_key is not None:
                return n.extra_key
            node = n.parent
        return None

    def path(self, node: int) -> tuple[list[int], list[int]]:
        """All tokens and pages from the root down to `node`, inclusive."""
        chain = []
        while node != ROOT:
            chain.append(self.nodes[node])
            node = chain[-1].parent
        tokens, pages = [], []
        for n in reversed(chain):
            tokens.extend(n.tokens)
            pages.extend(n.pages)
        return tokens, pages

    def depths(self) -> list[int]:
        """Tokens from the root to the end of each node, in one pass (parents come first)."""
        out: list[int] = []
        for n in self.nodes:
            out.append((out[n.parent] if n.parent != ROOT else 0) + len(n.tokens))
        return out

    def leaves(self) -> list[int]:
        parents = {n.parent for n in self.nodes}
        return [i for i in range(len(self.nodes)) if i not in parents]

    def walk(self) -> Iterator[tuple[int, list[int], list[int]]]:
        """(node, full token path, full page path) for every node, parents before children.
        Each path is built once from its parent's (memory grows with the tree's breadth)."""
        paths: dict[int, tuple[list[int], list[int]]] = {ROOT: ([], [])}
        children = {n.parent for n in self.nodes}
        for i, n in enumerate(self.nodes):
            tokens, pages = paths[n.parent]
            mine = (tokens + n.tokens, pages + n.pages)
            if i in children:
                paths[i] = mine
            yield i, mine[0], mine[1]

    def match(self, tokens: list[int], extra_key: Optional[str] = None) -> tuple[int, list[int]]:
        """Longest prefix of `tokens` made of whole nodes: (number of tokens, their pages).
        `shared_prefix` also counts the whole pages of a partly matching node."""
        matched, node = self.match_node(tokens, extra_key)
        return matched, (self.path(node)[1] if node != ROOT else [])

    def match_node(self, tokens: list[int], extra_key: Optional[str] = None) -> tuple[int, int]:
        """Longest prefix of `tokens` made of whole nodes: (tokens, deepest node; ROOT if none)."""
        matched, node, _ = self._descend(tokens, extra_key, len(self.nodes))
        return matched, node

    def shared_prefix(self, tokens: list[int], extra_key: Optional[str] = None,
                      before: Optional[int] = None) -> int:
        """Tokens of `tokens` that nodes (with ids below `before`) already hold, counting a
        partly matching last node; whole pages only."""
        matched, _, partial = self._descend(tokens, extra_key, len(self.nodes) if before is None else before)
        return matched + partial // self.page_size * self.page_size

    def _descend(self, tokens: list[int], extra_key: Optional[str], limit: int) -> tuple[int, int, int]:
        """Walks whole matching nodes among the first `limit`: (tokens matched, last node,
        tokens agreeing with the best partly matching child after it)."""
        children: dict[int, list[int]] = {}
        for i, n in enumerate(self.nodes[:limit]):
            children.setdefault(n.parent, []).append(i)
        keys = self.keys()
        matched, node = 0, ROOT
        while True:
            partial = 0
            for child in children.get(node, []):
                n = self.nodes[child]
                if keys[child] != extra_key:
                    continue
                span = tokens[matched: matched + len(n.tokens)]
                common = next((j for j, (a, b) in enumerate(zip(span, n.tokens)) if a != b),
                              min(len(span), len(n.tokens)))
                if common == len(n.tokens):
                    matched, node = matched + common, child
                    break
                partial = max(partial, common)
            else:
                return matched, node, partial

    @property
    def num_tokens(self) -> int:
        return sum(len(n.tokens) for n in self.nodes)

    def longest_prefix(self) -> int:
        return max(self.depths(), default=0)

    def validate(self, num_pages: int) -> None:
        """Checks structure: parents precede children, whole pages, page ids in range, no page shared."""
        if self.page_size <= 0:
            raise SchemaError(f"prefix: page_size must be positive, found {self.page_size}")
        owner: dict[int, int] = {}
        first_pages: dict[tuple, int] = {}
        keys: list[Optional[str]] = []
        for i, n in enumerate(self.nodes):
            where = f"prefix node {i}"
            if type(n.parent) is not int or not (n.parent == ROOT or 0 <= n.parent < i):
                raise SchemaError(f"{where}: parent {n.parent!r} must be -1 or an earlier node")
            if any(type(t) is not int for t in n.tokens) or any(type(p) is not int for p in n.pages):
                raise SchemaError(f"{where}: tokens and pages must be integers")
            if n.extra_key is not None and not isinstance(n.extra_key, str):
                raise SchemaError(f"{where}: extra key must be a string, found {type(n.extra_key).__name__}")
            if n.extra_key is not None and not n.extra_key.isascii():
                try:
                    n.extra_key.encode("utf-8")
                except UnicodeEncodeError:
                    raise SchemaError(f"{where}: extra key is not valid Unicode (lone surrogate)") from None
            keys.append(n.extra_key if n.extra_key is not None else (keys[n.parent] if n.parent != ROOT else None))
            sibling = (n.parent, keys[i], tuple(n.tokens[: self.page_size]))
            if sibling in first_pages:
                raise SchemaError(f"{where}: its first page holds the same tokens as sibling node "
                                  f"{first_pages[sibling]} (same parent and namespace)")
            first_pages[sibling] = i
            if not n.tokens or len(n.tokens) != len(n.pages) * self.page_size:
                raise SchemaError(
                    f"{where}: {len(n.tokens)} tokens do not fill its {len(n.pages)} pages of {self.page_size}")
            for page in n.pages:
                if not 0 <= page < num_pages:
                    raise SchemaError(f"{where}: page {page} is outside the snapshot's {num_pages} pages")
                if page in owner:
                    raise SchemaError(f"{where}: page {page} is already owned by node {owner[page]}")
                owner[page] = i
