"""An inference worker's own expert memory, managed by moe-routerd.

The same contract as the C++ moe_router::WorkerCache (client/worker_cache.h):
the server keeps an exact view of what this worker holds, routes against
it, and answers with what to drop and what to load; this class carries that
out on its own copies of the expert bytes.

    channel = grpc.insecure_channel("moe-router:50051")
    cache = WorkerCache(channel, "mixtral-8x7b", "pod-7.gpu0", 8 << 30)
    for layer in range(num_layers):                # per forward pass
        routed = cache.route(layer, gate_logits)   # drops and loads done
        for e in set(routed.experts):
            weights = cache.get(layer, e)          # bytes to compute with
"""

import struct
import time

import grpc
import xxhash

from moe_router.v1 import moe_router_pb2 as pb
from moe_router.v1 import moe_router_pb2_grpc as pb_grpc


def routing_headers(model, cache=""):
    """The metadata a proxy keeps a worker on one replica by: x-moe-model on
    every call, x-moe-cache "<model>/<cache>" on every call about a cache."""
    headers = [("x-moe-model", model)]
    if cache:
        headers.append(("x-moe-cache", f"{model}/{cache}"))
    return headers


# Trailing metadata of a call a draining replica refused before doing any of
# it (proto/grpc_status.h kRefusedTrailer): safe to send again.
REFUSED_TRAILER = "x-moe-refused"


def retrying_refusals(call, timeout):
    """`call(remaining_timeout)`, again while a draining replica refuses it
    (through a proxy the next attempt reaches another replica), with
    backoff, until `timeout` seconds have passed; as the C++ client does."""
    deadline = time.monotonic() + timeout
    backoff = 0.02
    while True:
        try:
            return call(max(deadline - time.monotonic(), 0.001))
        except grpc.RpcError as e:
            refused = any(k == REFUSED_TRAILER for k, _ in (e.trailing_metadata() or ()))
            if not refused or time.monotonic() + backoff >= deadline:
                raise
        time.sleep(backoff)
        backoff = min(2 * backoff, 0.5)


# Failures of a replica lost with the call in flight (died, or stalled past
# the attempt's deadline), as opposed to the server's answer.
_REPLICA_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def replica_lost(error):
    """Whether an RpcError is that of a lost replica (as the C++ ReplicaLost).
    gRPC reports a stream cut with its connection as UNKNOWN "Stream removed"
    where UNAVAILABLE is meant (grpc/grpc#34076); the server never answers
    UNKNOWN."""
    if not isinstance(error, grpc.RpcError):
        return False
    return error.code() in _REPLICA_LOST or (
        error.code() == grpc.StatusCode.UNKNOWN and error.details() == "Stream removed")


def _next_backoff(backoff):
    return min(2 * backoff, 0.5)


class ExpertDataLoss(ValueError):
    """An expert that arrived other than the server's store holds it
    (DATA_LOSS in the C++ client): the message says which tensor or chunk."""


def _xxh3(data):
    return xxhash.xxh3_64_intdigest(data)


def verify_expert(header, data, what):
    """Checks `data` (the expert's bytes) against its header chunk as the C++
    client's VerifyExpert does: XXH3-64 per tensor, the tensors covering the
    bytes exactly, and the expert checksum over names and tensor digests
    (proto/moe_router/v1/moe_router.proto, ExpertChunk.expert_xxh3)."""
    if header is None or not header.tensors:
        raise ExpertDataLoss(f"DATA_LOSS: {what} arrived without tensors")
    if len(data) != header.total_bytes:
        raise ExpertDataLoss(f"DATA_LOSS: {what}: received {len(data)} of {header.total_bytes} bytes")
    view = memoryview(data)
    expert = xxhash.xxh3_64()
    offset = 0
    for t in header.tensors:
        if t.size_bytes > len(data) - offset:
            raise ExpertDataLoss(f"DATA_LOSS: {what}: tensor '{t.name}' runs past the data")
        digest = _xxh3(view[offset:offset + t.size_bytes])
        if digest != t.xxh3:
            raise ExpertDataLoss(
                f"DATA_LOSS: {what}: tensor '{t.name}' arrived with a different checksum")
        expert.update(t.name.encode())
        expert.update(struct.pack("<Q", digest))
        offset += t.size_bytes
    if offset != len(data):
        raise ExpertDataLoss(
            f"DATA_LOSS: {what}: the tensors cover {offset} of the {len(data)} bytes received")
    if expert.intdigest() != header.expert_xxh3:
        raise ExpertDataLoss(f"DATA_LOSS: {what}: the expert's checksum does not match its tensors")


def fetch_expert(stub, model, layer, expert, timeout=60, cache="", attempt_timeout=None,
                 on_repeat=None):
    """The expert's bytes from FetchExpert (for `cache`: the worker cache it
    is fetched for), verified: chunks in order and within the size
    announced, and every checksum (verify_expert). ExpertDataLoss says what
    did not match. An attempt that fails as a lost replica does (or runs
    past `attempt_timeout` seconds) is repeated until `timeout`: a fetch
    changes nothing on the server. `on_repeat()` is called for each repeat."""
    return bytes(fetch_described_expert(stub, model, layer, expert, timeout, cache,
                                        attempt_timeout, on_repeat)[1])


def fetch_described_expert(stub, model, layer, expert, timeout=60, cache="",
                           attempt_timeout=None, on_repeat=None):
    """fetch_expert's bytes, as a bytearray the caller owns (tensors can be
    made over it without a copy), with the header chunk that describes them
    (the tensors' names, dtypes, shapes and sizes, in order)."""
    what = f"expert L{layer}/E{expert}"

    def attempt(remaining):
        data = bytearray()
        header = None
        for chunk in stub.FetchExpert(
            pb.FetchExpertRequest(model=model, layer=layer, expert=expert), timeout=remaining,
            metadata=routing_headers(model, cache),
        ):
            if header is None:
                header = chunk
            if chunk.offset != len(data):
                raise ExpertDataLoss(
                    f"DATA_LOSS: {what}: chunk at offset {chunk.offset}, expected {len(data)}")
            if len(chunk.data) > header.total_bytes - len(data):
                raise ExpertDataLoss(f"DATA_LOSS: {what}: chunk at offset {chunk.offset} runs past "
                                     f"the {header.total_bytes} bytes announced")
            data += chunk.data
        return header, data

    deadline = time.monotonic() + timeout
    backoff = 0.02
    while True:
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            header, data = retrying_refusals(
                attempt, min(remaining, attempt_timeout or remaining))
            break
        except grpc.RpcError as e:
            if not replica_lost(e) or time.monotonic() + backoff >= deadline:
                raise
        if on_repeat:
            on_repeat()
        time.sleep(backoff)
        backoff = _next_backoff(backoff)
    verify_expert(header, data, what)
    return header, data


class WorkerCache:
    """One worker's cache on the server, and the experts it holds.

    `load(layer, expert) -> bytes` is where experts come from; by default
    FetchExpert from the same server (served from its memory when it staged
    the expert). Not thread-safe: one per worker.

    A replica that dies or stalls with a call in flight (it may have applied
    it) costs no step: the call is repeated where the proxy now sends it,
    after the cache is reopened there with what the worker holds, until
    `timeout` seconds; an attempt not answered within `attempt_timeout`
    seconds counts as stalled (1 s: a routing call answers in well under a
    millisecond, tens under heavy load). `failovers` counts the repeats,
    fetches' included. As the C++ WorkerCache's FailoverOptions.
    """

    def __init__(self, channel, model, cache, budget_bytes, eviction_policy="", load=None,
                 timeout=10, attempt_timeout=1.0, fetch_attempt_timeout=5.0):
        self.stub = pb_grpc.MoeRouterStub(channel)
        self.model, self.cache, self.budget_bytes = model, cache, budget_bytes
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._headers = routing_headers(model, cache)
        self._load = load or (lambda layer, expert: fetch_expert(
            self.stub, model, layer, expert, timeout=timeout, cache=cache,
            attempt_timeout=fetch_attempt_timeout, on_repeat=self._count_failover))
        self.failovers = 0
        self.held = {}  # (layer, expert) -> bytes
        info = self._call(self.stub.OpenCache, pb.OpenCacheRequest(
            model=model, cache=cache, budget_bytes=budget_bytes, eviction_policy=eviction_policy),
            timeout=timeout)
        self.policy = info.eviction_policy
        self.eviction_policy = eviction_policy
        self.reopens = 0
        # A restarted worker holds nothing, whatever its cache remembers.
        if info.resident:
            self.resync()

    @property
    def held_bytes(self):
        return sum(len(b) for b in self.held.values())

    def route(self, layer, gate_logits):
        """Routes one layer's batch (tokens x experts floats, row-major),
        drops what the server said, then loads what it said to load."""
        routed = self._reliably(lambda: self._call(
            self.stub.RouteTokens,
            pb.RouteTokensRequest(model=self.model, layer=layer, gate_logits=gate_logits,
                                  cache=self.cache)))
        loads = [(r.layer, r.expert) for r in list(routed.urgent_page_ins) + list(routed.prefetches)]
        self._carry_out(routed.evictions, loads)
        return routed

    def prefetch(self, layer, gate_logits, budget=0):
        """Prefetches by a guess of the layer's gate (its top `budget`)."""
        answer = self._reliably(lambda: self._call(
            self.stub.Prefetch,
            pb.PrefetchRequest(model=self.model, layer=layer, budget=budget, cache=self.cache,
                               gate_logits=gate_logits)))
        self._carry_out(answer.evictions, [(layer, e) for e in answer.queued])
        return answer

    def get(self, layer, expert):
        """An expert to compute with: held, or loaded for this use only."""
        held = self.held.get((layer, expert))
        return held if held is not None else self._load(layer, expert)

    def drop(self, layer, expert):
        """Drops an expert on the worker's own initiative; resync() tells the server."""
        self.held.pop((layer, expert), None)

    def resync(self):
        """States to the server what this worker holds."""
        return self._reliably(self._state_held)

    def _call(self, method, request, timeout=None):
        """One attempt of a unary call about this cache (deadline `timeout`,
        else the attempt's), with its routing headers, and sent again while
        a draining replica refuses it."""
        return retrying_refusals(
            lambda remaining: method(request, timeout=remaining, metadata=self._headers),
            timeout or self.attempt_timeout)

    def _state_held(self):
        return self._call(self.stub.SyncCache, pb.SyncCacheRequest(
            model=self.model, cache=self.cache,
            resident=[pb.ExpertRef(layer=l, expert=e) for l, e in self.held]))

    def _reliably(self, call):
        """Runs `call`; when the server does not know the cache (the worker
        moved to another replica, or the cache expired), reopens it, states
        what the worker holds and runs `call` once more; when the replica
        was lost with the call in flight, does the same where the proxy now
        sends it, until the call's deadline."""
        deadline = time.monotonic() + self.timeout
        backoff = 0.02
        reopened = False
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND and not reopened:
                    reopened = True
                elif replica_lost(e) and time.monotonic() + backoff < deadline:
                    self.failovers += 1
                    time.sleep(backoff)
                    backoff = _next_backoff(backoff)
                else:
                    raise
            while True:
                try:
                    if self._reopen():
                        break
                except grpc.RpcError as e:
                    if not replica_lost(e) or time.monotonic() + backoff >= deadline:
                        raise
                if time.monotonic() + backoff >= deadline:
                    raise TimeoutError(f"cache '{self.cache}' kept moving between replicas "
                                       f"until the call's deadline")
                self.failovers += 1
                time.sleep(backoff)
                backoff = _next_backoff(backoff)

    def _count_failover(self):
        self.failovers += 1

    def _reopen(self):
        """Opens the cache and states what the worker holds; False when the
        cache was gone by the second call (the proxy moved it between the
        two: a replica just left its ring)."""
        info = self._call(self.stub.OpenCache, pb.OpenCacheRequest(
            model=self.model, cache=self.cache, budget_bytes=self.budget_bytes,
            eviction_policy=self.eviction_policy))
        self.reopens += 1
        self.policy = info.eviction_policy
        try:
            self._state_held()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return True

    def close(self):
        self._call(self.stub.CloseCache, pb.CloseCacheRequest(model=self.model, cache=self.cache),
                   timeout=self.timeout)

    def _carry_out(self, evictions, loads):
        for ref in evictions:
            self.held.pop((ref.layer, ref.expert), None)
        for key in loads:
            try:
                self.held[key] = self._load(*key)
            except Exception:
                # Keep the server's view exact before reporting the failure.
                self.resync()
                raise
