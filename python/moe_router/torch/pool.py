"""Where offloaded experts live: a host store of every expert's tensors and a
device pool of fixed slots, allocated once within the byte budget, that
loads copy into.

On a CUDA device the host tensors are pinned and loads are copies on a side
stream, each followed by an event the computing stream waits on. (That path
is written against PyTorch's documented CUDA API and has not run here: no
GPU.) On the CPU loads are copies made on one background thread; torch
releases the GIL while it copies, so prefetches overlap the model's work.
"""

from concurrent.futures import Future, ThreadPoolExecutor
import time
from typing import Dict, List, Sequence, Tuple

import torch

Key = Tuple[int, int]  # (layer, expert)


class ExpertLoadError(RuntimeError):
    """An expert could not be brought into the device pool."""


class HostStore:
    """Every expert's tensors in host memory, by (layer, expert)."""

    def __init__(self, shapes: Sequence[torch.Size], dtype: torch.dtype):
        self.shapes = list(shapes)
        self.dtype = dtype
        self._tensors: Dict[Key, List[torch.Tensor]] = {}

    def put(self, key: Key, tensors: List[torch.Tensor]) -> None:
        if [t.shape for t in tensors] != self.shapes or any(t.dtype != self.dtype for t in tensors):
            raise ExpertLoadError(
                f"expert {key}: tensors {[tuple(t.shape) for t in tensors]} {tensors[0].dtype} "
                f"do not match the pool's {[tuple(s) for s in self.shapes]} {self.dtype}")
        self._tensors[key] = tensors

    def check(self, key: Key) -> None:
        """Raises ExpertLoadError if `key` cannot be read; cheap."""
        if key not in self._tensors:
            raise ExpertLoadError(f"expert {key} is not in the host store")

    def read(self, key: Key) -> List[torch.Tensor]:
        """The expert's tensors (on the loading thread for a load)."""
        self.check(key)
        return self._tensors[key]

    def pop(self, key: Key) -> List[torch.Tensor]:
        return self._tensors.pop(key)


class DevicePool:
    """`slots` expert slots on `device`, one tensor per expert part, made once.

    A slot is free or holds one expert, loaded or loading. The owner says what
    to drop and load (the engine's instructions); `tensors(key)` waits for the
    key's load and returns its slot's views.
    """

    def __init__(self, store: HostStore, slots: int, device: torch.device):
        if slots <= 0:
            raise ValueError("the budget holds no expert")
        self.store = store
        self.device = device
        self.slots = slots
        # Zeroed, so that host memory is faulted in here, once, and not by
        # the first load into each slot while the model waits.
        self._parts = [torch.zeros((slots, *shape), dtype=store.dtype, device=device)
                       for shape in store.shapes]
        self.slot_bytes = sum(p[0].numel() * p[0].element_size() for p in self._parts)
        self._free = list(range(slots - 1, -1, -1))
        self._slot_of: Dict[Key, int] = {}
        self._pending: Dict[int, Future] = {}  # slot -> its load in flight
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moe-router-load")
        self.loads = 0
        self.streamed = 0
        self.evictions = 0
        self.failed_loads = 0
        self.bytes_moved = 0
        self.load_wait_s = 0.0

    def holds(self) -> List[Key]:
        return sorted(self._slot_of)

    def __contains__(self, key: Key) -> bool:
        return key in self._slot_of

    def evict(self, key: Key) -> None:
        slot = self._slot_of.pop(key, None)
        if slot is None:
            return
        try:
            self._settle(slot)  # a load still writing it must finish first
        except Exception:  # a prefetch that failed: dropped all the same
            self.failed_loads += 1
        finally:
            self._free.append(slot)
        self.evictions += 1

    def load(self, key: Key, wait: bool) -> None:
        """Starts copying `key` into a free slot; with `wait`, returns when it
        is there. A load that fails leaves the key absent and its slot free."""
        if key in self._slot_of:
            return
        self.store.check(key)  # fails before a slot is taken
        if not self._free:
            raise ExpertLoadError(f"no free slot for expert {key}: the pool holds {self.slots}")
        slot = self._free.pop()
        self._slot_of[key] = slot
        self.loads += 1
        self.bytes_moved += self.slot_bytes
        future = self._loader.submit(self._copy, slot, key)
        self._pending[slot] = future
        if wait:
            self._settle_or_drop(key, slot)

    def tensors(self, key: Key) -> List[torch.Tensor]:
        """The slot views of a resident expert, once its load is done."""
        slot = self._slot_of.get(key)
        if slot is None:
            raise ExpertLoadError(f"expert {key} is not in the device pool")
        self._settle_or_drop(key, slot)
        return [p[slot] for p in self._parts]

    def stream(self, key: Key) -> List[torch.Tensor]:
        """An expert used once without being kept (a batch wanting more
        experts than the pool holds): a copy of its host tensors on the
        device, or the host tensors themselves on the CPU."""
        tensors = self.store.read(key)
        self.streamed += 1
        self.bytes_moved += self.slot_bytes
        if self.device.type == "cpu":
            return tensors
        return [t.to(self.device, non_blocking=True) for t in tensors]

    def ready(self, key: Key) -> bool:
        slot = self._slot_of.get(key)
        future = self._pending.get(slot) if slot is not None else None
        return slot is not None and (future is None or future.done())

    def close(self) -> None:
        self._loader.shutdown(wait=True)
        self._pending.clear()

    def _copy(self, slot: int, key: Key):
        tensors = self.store.read(key)  # a checkpoint's read happens here, off the model's thread
        if self._cuda:
            with torch.cuda.stream(self._stream):
                for part, source in zip(self._parts, tensors):
                    part[slot].copy_(source, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._stream)
            return event
        for part, source in zip(self._parts, tensors):
            part[slot].copy_(source)
        return None

    def _settle(self, slot: int) -> None:
        future = self._pending.pop(slot, None)
        if future is None:
            return
        start = time.perf_counter()
        try:
            event = future.result()
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
        finally:
            self.load_wait_s += time.perf_counter() - start

    def _settle_or_drop(self, key: Key, slot: int) -> None:
        try:
            self._settle(slot)
        except Exception as error:
            self.failed_loads += 1
            self._slot_of.pop(key, None)
            self._free.append(slot)
            raise ExpertLoadError(f"loading expert {key} failed: {error}") from error
