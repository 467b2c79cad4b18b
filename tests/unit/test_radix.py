"""The radix tree and the prefix cache's bookkeeping, without a runtime."""

from slmd.cache.prefix_cache import CacheConfig, EvictionPolicy, PrefixCache
from slmd.cache.radix import DeviceKV, HostKV, RadixTree


def test_match_insert_split_and_partial_edges():
    t = RadixTree()
    t.insert([1, 2, 3, 4, 5], DeviceKV(0))
    m = t.match([1, 2, 3, 9])
    assert m.num_tokens == 3 and m.source.holder.seq_id == 0  # partial edge still served by seq 0
    _, redundant = t.insert([1, 2, 3, 7, 8], DeviceKV(1))  # splits the edge after 3 tokens
    assert redundant == []
    assert t.match([1, 2, 3, 7, 8, 9]).num_tokens == 5
    assert t.match([1, 2, 3, 7, 8, 9]).source.holder.seq_id == 1
    assert t.match([4, 5]).num_tokens == 0


def test_prefix_holders_become_redundant():
    t = RadixTree()
    t.insert([1, 2, 3], DeviceKV(0))
    _, redundant = t.insert([1, 2, 3, 4, 5], DeviceKV(1))  # a longer conversation turn
    assert [h.seq_id for h in redundant] == [0]
    _, redundant = t.insert([1, 2], DeviceKV(2))  # already covered by seq 1
    assert [h.seq_id for h in redundant] == [2]
    assert sorted(n.holder.seq_id for n in t.holders()) == [1]


def test_locks_protect_and_detach_prunes():
    t = RadixTree()
    node, _ = t.insert([1, 2, 3], DeviceKV(0))
    t.lock(node)
    assert node.lock_ref == 1 and t.root.lock_ref == 2
    t.unlock(node)
    t.detach(node)
    assert t.root.children == {} and t.match([1, 2, 3]).num_tokens == 0


def _cache(**kw) -> PrefixCache:
    return PrefixCache(CacheConfig(min_tokens=2, **kw))


def test_namespaces_isolate_apps_and_groups_share():
    c = _cache(sharing_groups={"office": ("writer", "slides")})
    doc = list(range(100, 140))
    assert c.insert(doc, c.namespace_for("mail"), 0) == []
    assert c.match(doc + [1], c.namespace_for("chat"), max_tokens=999) is None  # another app: nothing
    hit = c.match(doc + [1], c.namespace_for("mail"), max_tokens=999)
    assert hit.num_tokens == 40
    c.release_hit(hit)
    c.insert(doc, c.namespace_for("writer"), 1)
    hit = c.match(doc + [1], c.namespace_for("slides"), max_tokens=999)  # same sharing group
    assert hit.num_tokens == 40 and hit.device_seq == 1
    c.release_hit(hit)


def test_public_namespace_is_matched_by_all_but_written_only_by_publish():
    c = _cache()
    system = list(range(10, 30))
    c.publish(system, 5)
    hit = c.match(system + [7, 8], c.namespace_for("anyone"), max_tokens=999)
    assert hit.num_tokens == 20 and hit.namespace == "public"
    c.release_hit(hit)


def test_eviction_order_locks_and_host_tier():
    c = _cache(host_bytes=100)
    c.insert([1] * 10, "app:a", 0)
    c.insert([2] * 10, "app:a", 1)
    hit = c.match([1] * 10 + [3], "app:a", max_tokens=10)  # locks seq 0 and touches it
    ns, node, seq = c.evict_device()
    assert seq == 1  # seq 0 is locked
    assert c.evict_device() is None  # nothing else evictable
    c.demote(ns, node, b"x" * 60)
    assert isinstance(node.holder, HostKV) and c.stats.host_bytes == 60
    hit2 = c.match([2] * 10 + [3], "app:a", max_tokens=10)
    assert hit2.host_data == b"x" * 60 and hit2.num_tokens == 10
    c.release_hit(hit2)
    c.release_hit(hit)
    ns, node, seq = c.evict_device()
    assert seq == 0
    c.demote(ns, node, b"y" * 60)  # over the 100-byte budget: the older host entry goes
    assert c.stats.host_bytes == 60 and c.stats.evictions_host == 1


def test_priority_policy_evicts_background_first():
    c = PrefixCache(CacheConfig(min_tokens=2, policy=EvictionPolicy.PRIORITY))
    c.insert([1] * 5, "app:a", 0, priority=3)
    c.insert([2] * 5, "app:a", 1, priority=1)
    c.insert([3] * 5, "app:a", 2, priority=3)
    assert c.evict_device()[2] == 1


def test_short_sequences_and_disabled_cache_release_immediately():
    assert _cache().insert([1], "app:a", 3) == [3]
    off = PrefixCache(CacheConfig(enabled=False))
    assert off.insert(list(range(50)), "app:a", 4) == [4]
    assert off.match(list(range(50)), "app:a", max_tokens=49) is None


def test_match_falls_back_to_ancestors_when_a_leaf_has_no_kv():
    from slmd.cache.radix import PendingSave

    t = RadixTree()
    a, _ = t.insert([1, 2, 3, 4], DeviceKV(0))
    t.insert([1, 2, 5, 6], DeviceKV(1))
    a.holder = PendingSave(0)  # on its way to the host tier
    m = t.match([1, 2, 3, 4, 9])
    assert m.num_tokens == 2 and m.source.holder.seq_id == 1


def test_a_pending_save_is_never_made_redundant():
    c = PrefixCache(CacheConfig(min_tokens=1))
    c.insert(list(range(20)), "app:a", 1)
    ns, node, seq = c.evict_device()
    assert c.insert(list(range(20)) + [99, 100], "app:a", 2) == []
    c.demote(ns, node, b"z" * 10)  # the save lands after the longer holder arrived
    assert c.stats.host_bytes == 10
