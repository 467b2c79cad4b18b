"""The shared prefix cache: radix trees per namespace, device holders (idle
KV streams) and a host-memory tier, with pluggable eviction.

Namespaces come from the identity the daemon derived, never from a request
field: an app's own namespace, or its sharing group's when an operator put it
in one. The public namespace holds only what slmd itself publishes (system
prompts, task templates) and is matched by everyone, but only slmd inserts
into it. So app B can never hit (or time) app A's document."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from slmd.cache.radix import DeviceKV, HostKV, Match, Node, PendingSave, RadixTree

PUBLIC = "public"


class EvictionPolicy(enum.Enum):
    LRU = "lru"
    PRIORITY = "priority"  # lower priority first, then least recently used


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    min_tokens: int = 16  # shorter sequences are not worth a holder, shorter hits not worth a copy
    host_bytes: int = 512 << 20  # host-memory tier budget; 0 = off
    policy: EvictionPolicy = EvictionPolicy.LRU
    sharing_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> app ids


@dataclass
class CacheStats:
    query_tokens: int = 0
    hit_tokens: int = 0
    host_hit_tokens: int = 0
    evictions_device: int = 0
    evictions_host: int = 0
    saves: int = 0
    restores: int = 0
    host_bytes: int = 0


@dataclass(frozen=True)
class Hit:
    namespace: str
    num_tokens: int
    source: Node  # locked until `release_hit`

    @property
    def device_seq(self) -> int | None:
        h = self.source.holder
        return h.seq_id if isinstance(h, DeviceKV) else None

    @property
    def exact(self) -> int:
        return self.source.holder.exact

    @property
    def host_data(self) -> bytes | None:
        h = self.source.holder
        return h.data if isinstance(h, HostKV) else None


class PrefixCache:
    def __init__(self, cfg: CacheConfig) -> None:
        self.cfg = cfg
        self.stats = CacheStats()
        self._trees: dict[str, RadixTree] = {}
        self._group_of = {app: g for g, apps in cfg.sharing_groups.items() for app in apps}

    def namespace_for(self, app_id: str) -> str:
        group = self._group_of.get(app_id)
        return f"group:{group}" if group else f"app:{app_id}"

    def _tree(self, ns: str) -> RadixTree:
        return self._trees.setdefault(ns, RadixTree())

    # ---- lookups ----------------------------------------------------------

    def match(self, tokens: list[int], namespace: str, *, max_tokens: int, priority: int = 0) -> Hit | None:
        """The longest cached prefix (at most `max_tokens`) in the caller's
        namespace or the public one; the source is locked."""
        self.stats.query_tokens += len(tokens)
        if not self.cfg.enabled:
            return None
        best: tuple[Match, str] | None = None
        for ns in (namespace, PUBLIC):
            tree = self._trees.get(ns)
            if tree is None:
                continue
            m = tree.match(tokens)
            if m.is_hit and (best is None or m.num_tokens > best[0].num_tokens):
                best = (m, ns)
        if best is None:
            return None
        m, ns = best
        n = min(m.num_tokens, max_tokens)
        if n < self.cfg.min_tokens:  # as short as a sequence not worth keeping: not worth a copy either
            return None
        tree = self._trees[ns]
        tree.lock(m.source)
        tree.touch(m.node, priority)
        self.stats.hit_tokens += n
        if isinstance(m.source.holder, HostKV):
            self.stats.host_hit_tokens += n
        return Hit(ns, n, m.source)

    def release_hit(self, hit: Hit) -> None:
        self._trees[hit.namespace].unlock(hit.source)

    # ---- inserting --------------------------------------------------------

    def insert(self, tokens: list[int], namespace: str, seq_id: int, priority: int = 0, exact: int = 0) -> list[int]:
        """Offer a finished sequence's stream as a holder of `tokens`. Returns
        the device sequence ids the caller must release (the offered one when
        it adds nothing, or older holders it makes redundant)."""
        if not self.cfg.enabled or len(tokens) < self.cfg.min_tokens:
            return [seq_id]
        _, redundant = self._tree(namespace).insert(tokens, DeviceKV(seq_id, exact), priority)
        out = []
        for h in redundant:
            if isinstance(h, DeviceKV):
                out.append(h.seq_id)
            elif isinstance(h, HostKV):
                self.stats.host_bytes -= h.num_bytes
        return out

    def covers(self, tokens: list[int], namespace: str) -> bool:
        """Whole `tokens` already held in this namespace (on the device or host)."""
        tree = self._trees.get(namespace)
        return self.cfg.enabled and tree is not None and tree.match(tokens).num_tokens >= len(tokens)

    def touch(self, tokens: list[int], namespace: str, priority: int = 0) -> None:
        m = self._trees[namespace].match(tokens)
        if m.node is not None:
            self._trees[namespace].touch(m.node, priority)

    def publish(self, tokens: list[int], seq_id: int) -> list[int]:
        """slmd's own public prefixes (system prompts); apps cannot insert here."""
        return self.insert(tokens, PUBLIC, seq_id)

    # ---- eviction ---------------------------------------------------------

    def _key(self, node: Node):
        if self.cfg.policy == EvictionPolicy.PRIORITY:
            return (node.priority, node.last_access)
        return (node.last_access,)

    def _candidates(self, kind):
        for ns, tree in self._trees.items():
            for node in tree.holders():
                if isinstance(node.holder, kind) and node.lock_ref == 0:
                    yield ns, node

    def evict_device(self, skip: set[int] = frozenset()) -> tuple[str, Node, int] | None:
        """Pick the device holder to give up (unlocked, not in `skip`, by
        policy); the caller saves it to the host tier (`demote`) or drops it."""
        victims = sorted((c for c in self._candidates(DeviceKV) if c[1].holder.seq_id not in skip),
                         key=lambda c: self._key(c[1]))
        if not victims:
            return None
        ns, node = victims[0]
        self.stats.evictions_device += 1
        seq = node.holder.seq_id
        node.holder = PendingSave(seq, node.holder.exact)  # out of reach until `demote` or `drop`
        return ns, node, seq

    def demote(self, ns: str, node: Node, data: bytes) -> None:
        """The device holder's state now lives in host memory."""
        if not isinstance(node.holder, PendingSave):  # dropped meanwhile
            return
        node.holder = HostKV(data, node.depth, node.holder.exact)
        self.stats.saves += 1
        self.stats.host_bytes += len(data)
        while self.stats.host_bytes > self.cfg.host_bytes:
            if not self._evict_host():
                break

    def drop(self, ns: str, node: Node) -> None:
        holder = self._trees[ns].detach(node)
        if isinstance(holder, HostKV):
            self.stats.host_bytes -= holder.num_bytes

    def _evict_host(self) -> bool:
        victims = sorted(self._candidates(HostKV), key=lambda c: self._key(c[1]))
        if not victims:
            return False
        ns, node = victims[0]
        self.drop(ns, node)
        self.stats.evictions_host += 1
        return True

    def clear_host(self) -> int:
        """Drop the whole host tier (memory pressure); returns bytes freed."""
        freed = self.stats.host_bytes
        while self._evict_host():
            pass
        return freed

    def device_holders(self) -> list[int]:
        return [n.holder.seq_id for t in self._trees.values() for n in t.holders() if isinstance(n.holder, DeviceKV)]

    def cached_tokens(self) -> int:
        return sum(n.depth for t in self._trees.values() for n in t.holders() if isinstance(n.holder, DeviceKV))

    @property
    def wants_host_tier(self) -> bool:
        return self.cfg.enabled and self.cfg.host_bytes > 0
