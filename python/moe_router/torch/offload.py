"""offload_experts: a PyTorch MoE model whose experts moe-router pages."""

import json
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from moe_router import _engine
from moe_router.torch import experts as arithmetic
from moe_router.torch.blocks import MoeBlock, UnsupportedModel, find_moe_blocks, router_of
from moe_router.torch.checkpoint import CheckpointStore, ServerStore
from moe_router.torch.pool import DevicePool, ExpertLoadError, HostStore
from moe_router.torch.routing import Scores, reconcile

PREFETCH_MODES = ("gate_guess", "coactivation", None)


class _Recorder:
    """The routing the model ran, as the routing JSONL `moe-router replay`
    and `trace stats` read: one line per (token, layer). A layer's first
    call is the prompt (`generate`'s prefill): its lines say "phase":
    "prompt", the others' "generated" (as `trace import` writes them), and
    `replay --batch` prefills the prompt together."""

    def __init__(self, path: str, num_experts: int):
        self._file = open(path, "w", encoding="utf-8")
        self._num_experts = num_experts
        self._tokens = {}  # layer -> tokens seen

    def write(self, layer: int, experts: np.ndarray, weights: np.ndarray) -> None:
        first = self._tokens.get(layer, 0)
        prompt = first == 0
        for row in range(experts.shape[0]):
            line = {"dataset": "moe_router.torch", "problem_id": 0, "layer": layer,
                    "token_idx": first + row, "num_experts": self._num_experts,
                    "experts": [int(e) for e in experts[row]],
                    "gating_probs": [round(float(w), 6) for w in weights[row]]}
            line["phase"] = "prompt" if prompt else "generated"
            self._file.write(json.dumps(line) + "\n")
        self._tokens[layer] = first + experts.shape[0]

    def close(self) -> None:
        self._file.close()


class Offload:
    """What offload_experts returns: the model now pages its experts; stats()
    says how, close() puts the original blocks and tensors back."""

    def __init__(self, model: nn.Module, blocks: List[MoeBlock], budget_bytes: int,
                 device: torch.device, server: Optional[str], bonus: Optional[float],
                 prefetch: Optional[str], record: Optional[str], eviction_policy: str,
                 model_name: str, checkpoint: Optional[str], expert_server: Optional[str]):
        self.model = model
        self.blocks = blocks
        self.device = device
        self.prefetch_mode = prefetch
        first = blocks[0]
        self.num_experts, self.top_k = first.num_experts, first.top_k
        self.model_name = model_name  # at the server, when there is one
        self.cache_name = f"torch-{os.getpid()}-{id(self):x}"
        self._moved = []  # the model's expert tensors are not read from elsewhere
        if checkpoint is not None:
            self.store = CheckpointStore(checkpoint, blocks)
        elif expert_server is not None:
            self.store = ServerStore(expert_server, model_name, blocks, self.cache_name)
        else:
            self._moved = self._move_experts_to_host()
            self.store = self._build_store()
        self.expert_bytes = sum(int(np.prod(s)) for s in self.store.shapes) * \
            torch.empty((), dtype=self.store.dtype).element_size()
        slots = min(budget_bytes // self.expert_bytes, len(blocks) * self.num_experts)
        if slots < self.top_k:
            raise ValueError(
                f"budget {budget_bytes} bytes holds {slots} experts of {self.expert_bytes} "
                f"bytes; a layer needs {self.top_k}")
        self.pool = DevicePool(self.store, slots, device)
        self.engine_budget = slots * self.expert_bytes
        self.engine = self._make_engine(server, bonus, eviction_policy, model_name,
                                        self.engine_budget)
        self._step = _engine.Step()
        self._prefetch_step = _engine.Step()
        self._recorder = _Recorder(record, self.num_experts) if record else None
        self._counts = dict(hits=0, misses=0, ready=0, accesses=0, tokens=0, layer_calls=0,
                            guesses=0, guesses_right=0)
        self._guessed = {}  # layer -> experts the gate guess prefetched for it
        self._chosen = {}  # layer -> Llama 4's router's choice, for its block
        # The blocks stay in the model (hooks on them and on their routers,
        # Transformers' output recorders among them, keep firing); what
        # computes is replaced on the instances, put back at close.
        self._patches = []
        for layer, block in enumerate(blocks):
            self._install(layer, block)
        self._closed = False

    # -- setup ---------------------------------------------------------------

    def _install(self, layer: int, block: MoeBlock) -> None:
        module = block.module
        # What chooses.
        if block.layout in ("inline", "dense_inline"):
            self._patch(module, "forward", self._inline_forward(layer))
        elif block.layout == "block_routes":
            self._patch(module, "route_tokens_to_experts", self._choose_forward(layer))
        else:
            self._patch(router_of(module), "forward", self._router_forward(layer))
        # What computes the experts (inline blocks do both).
        if block.layout == "scaled_input":
            self._patch(module, "forward", self._scaled_input_forward(layer))
        elif block.layout in ("deepseek_router", "deepseek_v2_router"):
            self._patch(module, "moe", self._experts_forward(layer))
        elif block.layout == "token_choice_router":
            self._patch(block.fused_experts, "forward", self._sorted_samples_forward(layer))
        elif block.layout == "dbrx_router":
            self._patch(block.fused_experts, "forward", self._stacked_experts_forward(layer))
        elif block.layout == "dense_weights_router":
            self._patch(block.fused_experts, "forward", self._dense_weights_experts_forward(layer))
        elif block.layout == "parallel_experts":
            for part, linear in enumerate((module.input_linear, module.output_linear)):
                self._patch(linear, "forward", self._parallel_experts_forward(layer, part))
        elif block.fused:
            self._patch(block.fused_experts, "forward", self._experts_forward(layer))

    def _patch(self, owner: nn.Module, attr: str, function) -> None:
        had = attr in owner.__dict__
        self._patches.append((owner, attr, had, owner.__dict__.get(attr)))
        setattr(owner, attr, function)

    def _unpatch(self) -> None:
        for owner, attr, had, previous in reversed(self._patches):
            if had:
                setattr(owner, attr, previous)
            else:
                delattr(owner, attr)
        self._patches.clear()

    def _move_experts_to_host(self):
        """On an accelerator the experts move to host memory (pinned), and
        back at close; on the CPU they stay where they are, the host store."""
        moved = []
        if self.device.type == "cpu":
            return moved
        for block in self.blocks:
            for module, attr in block.expert_parameters:
                param = getattr(module, attr)
                moved.append((param, param.data.device))
                param.data = param.data.to("cpu").pin_memory()
        return moved

    def _build_store(self) -> HostStore:
        first = [t.detach() for t in self.blocks[0].expert_tensors(0)]
        store = HostStore([t.shape for t in first], first[0].dtype)
        for layer, block in enumerate(self.blocks):
            for e in range(block.num_experts):
                tensors = [t.detach() for t in block.expert_tensors(e)]
                if [t.shape for t in tensors] != store.shapes:
                    raise UnsupportedModel(
                        f"{block.name}: expert {e}'s tensors {[tuple(t.shape) for t in tensors]} "
                        f"differ from the first block's; every expert must have one size")
                store.put((layer, e), tensors)
        return store

    def _make_engine(self, server, bonus, eviction_policy, model_name, budget):
        layers = len(self.blocks)
        threshold = 0.5 if self.prefetch_mode is not None else 0.0
        rule = self.blocks[0].routing.rule
        biases = [b.routing.choice_bias for b in self.blocks]
        choice_bias = None if biases[0] is None else \
            np.ascontiguousarray(np.stack(biases), dtype=np.float32)
        if server is None:
            defaults = {} if bonus is None else {"cache_bonus": float(bonus)}
            return _engine.LocalEngine(layers, self.num_experts, self.top_k, self.expert_bytes,
                                       budget, eviction_policy=eviction_policy or "",
                                       prefetch_threshold=threshold, routing=rule,
                                       choice_bias=choice_bias, **defaults)
        from moe_router.torch.fleet import model_spec, register_model
        register_model(server, model_spec(
            model_name, layers, self.num_experts, self.top_k, self.expert_bytes, bonus=bonus,
            prefetch_next_layer=2 if self.prefetch_mode == "coactivation" else 0,
            prefetch_threshold=threshold, routing=rule, choice_bias=choice_bias))
        return _engine.InProcessWorker(server, model_name, self.cache_name, budget,
                                       eviction_policy=eviction_policy or "")

    # -- the per-layer path ----------------------------------------------------
    # Each replacement computes what the original computes, with the engine's
    # choice and the pool's tensors: routing in _route, experts in _experts.

    def _inline_forward(self, layer: int):
        """Transformers 4.x's blocks that route themselves: route, experts,
        a shared expert (Qwen2-MoE's gated, ERNIE 4.5's and Hunyuan's not);
        returns (hidden states, router logits), Hunyuan's the hidden states."""
        block = self.blocks[layer]
        module = block.module

        def forward(hidden_states, *args, **kwargs):
            batch, sequence, hidden = hidden_states.shape
            x = hidden_states.view(-1, hidden)
            router_logits = router_of(module)(block.gate_input(x, hidden_states))
            chosen, scores = self._route(layer, router_logits)
            weights = block.routing.weights(scores, chosen, x.dtype)
            self._record(layer, chosen, weights)
            out = self._experts(layer, x, chosen, weights)
            if getattr(module, "shared_expert", None) is not None:
                shared = module.shared_expert(x)
                shared = torch.sigmoid(module.shared_expert_gate(x)) * shared
                out = out + shared
            if getattr(module, "shared_experts", None) is not None:
                out = out + module.shared_experts(x)
            out = out.reshape(batch, sequence, hidden)
            if getattr(module, "shared_mlp", None) is not None:  # Hunyuan's, on the input
                out = out + module.shared_mlp(hidden_states)
            return (out, router_logits) if block.returns_logits else out
        return forward

    def _router_forward(self, layer: int):
        """A router that chooses, returning what its class returns
        (MoeBlock.router_returns): 5.x's top-k routers (probabilities or
        logits, weights, indices), ERNIE 4.5's (logits, indices, weights),
        4.x GPT-OSS's (weights over all experts, indices), Llama 4's
        (weights over all experts, logits), 4.x DeepSeek-V3's (indices,
        weights)."""
        block = self.blocks[layer]

        def forward(hidden_states, *args, **kwargs):
            x = hidden_states.reshape(-1, hidden_states.shape[-1])
            logits = block.gate_logits(x)
            chosen, scores = self._route(layer, logits)
            weights = block.routing.weights(scores, chosen, x.dtype)
            self._record(layer, chosen, weights)
            values = {"indices": chosen, "weights": weights, "logits": logits,
                      "probabilities": scores.weighing}
            if "hidden_probabilities" in block.router_returns:  # 4.x DBRX's
                values["hidden_probabilities"] = scores.weighing.to(x.dtype)
            if "dense" in block.router_returns:
                values["dense"] = block.routing.dense_weights(scores, chosen, weights)
            if "batch_index" in block.router_returns:
                values.update(arithmetic.sorted_by_expert(chosen, weights, block.num_experts))
            if block.layout == "scaled_input":
                self._chosen[layer] = chosen  # for the block's call that follows
            if block.layout == "parallel_experts":  # no _experts call to guess after
                self._maybe_guess_next(layer, x)
            return tuple(values[name] for name in block.router_returns)
        return forward

    def _choose_forward(self, layer: int):
        """5.x's route_tokens_to_experts([hidden states,] router logits) of
        DeepSeek-V3, DeepSeek-V2 (logits in the input's (batch, tokens)
        shape), Hunyuan-MoE and Jamba (which passes the hidden states, whose
        dtype the weights take; the others' take the logits')."""
        block = self.blocks[layer]

        def route_tokens_to_experts(*args):
            router_logits = args[-1].reshape(-1, args[-1].shape[-1])
            chosen, scores = self._route(layer, router_logits)
            weights = block.routing.weights(scores, chosen, args[0].dtype)
            self._record(layer, chosen, weights)
            return chosen, weights
        return route_tokens_to_experts

    def _experts_forward(self, layer: int):
        """The experts' (or 4.x DeepSeek-V3's `moe`) call: (hidden states,
        indices, weights) -> the routed experts' sum."""
        def forward(hidden_states, top_k_index, top_k_weights):
            return self._experts(layer, hidden_states, top_k_index, top_k_weights)
        return forward

    def _scaled_input_forward(self, layer: int):
        """Llama 4's block: the router, the chosen experts on the scaled
        inputs, the shared expert; returns (hidden states, router logits)."""
        block = self.blocks[layer]
        module = block.module

        def forward(hidden_states, *args, **kwargs):
            x = hidden_states.reshape(-1, hidden_states.shape[-1])
            scores, router_logits = module.router(x)
            chosen = self._chosen.pop(layer)
            routed = self._experts(layer, x, chosen, scores)
            out = module.shared_expert(x)
            out.add_(routed)
            return out, router_logits
        return forward

    def _parallel_experts_forward(self, layer: int, part: int):
        """Granite-MoE's ParallelExperts(inputs, expert_size): the inputs
        split in runs per expert id, each run through that expert's matrix
        (`part` 0: input_linear, 1: output_linear), concatenated. Only the
        chosen experts' runs are not empty; the others add nothing."""
        def forward(inputs, expert_size):
            runs = inputs.split(expert_size, dim=0)
            return torch.cat([torch.nn.functional.linear(run, self._tensors_of(layer, e)[part])
                              for e, run in enumerate(runs) if run.shape[0]], dim=0)
        return forward

    def _dense_weights_experts_forward(self, layer: int):
        """4.x GPT-OSS's experts: (hidden states of any leading shape, indices,
        weights over all experts) -> (batch, tokens, hidden)."""
        def forward(hidden_states, router_indices=None, routing_weights=None):
            x = hidden_states.reshape(-1, hidden_states.shape[-1])
            weights = routing_weights.gather(1, router_indices)
            out = self._experts(layer, x, router_indices, weights)
            return out.view(hidden_states.shape[0], -1, x.shape[-1])
        return forward

    def _stacked_experts_forward(self, layer: int):
        """4.x DBRX's experts: ((batch, tokens, hidden) states, probabilities,
        weights, indices) -> that shape."""
        def forward(x, weights, top_weights, top_experts):
            flat = x.view(-1, x.shape[-1])
            return self._experts(layer, flat, top_experts, top_weights).reshape(x.shape)
        return forward

    def _sorted_samples_forward(self, layer: int):
        """AFMoE's experts: ((batch, tokens, hidden) states, indices, weights
        each (batch, tokens, top_k)) -> that shape."""
        def forward(hidden_states, selected_experts, routing_weights):
            x = hidden_states.view(-1, hidden_states.shape[-1])
            k = selected_experts.shape[-1]
            out = self._experts(layer, x, selected_experts.reshape(-1, k),
                                routing_weights.reshape(-1, k))
            return out.view(hidden_states.shape)
        return forward

    def _route(self, layer: int, logits: torch.Tensor) -> Tuple[torch.Tensor, Scores]:
        """The engine's choice for a layer call, its experts brought into the
        pool; returned as the model would order it (see reconcile)."""
        block = self.blocks[layer]
        scores = block.routing.scores(logits)
        own = block.routing.own_choice(scores)
        step = self._step
        given = logits if scores.given is None else scores.given
        self.engine.route(layer, given.detach().float().cpu().numpy(), step)
        engine_choice = np.array(step.experts, dtype=np.int64)  # the step's buffer is reused
        # The distinct experts the call needs, each with whether it was held
        # before the call (a resident flag is the same for every token).
        needed = dict(zip(engine_choice.ravel().tolist(),
                          np.asarray(step.resident).ravel().tolist()))
        self._count(layer, needed, engine_choice.shape[0])
        # Ready: in the pool and done loading before this layer asked.
        self._counts["ready"] += sum(self.pool.ready((layer, e)) for e in needed)
        self._guarded(lambda: self._carry_out(step, wait_for_urgent=True))
        return reconcile(engine_choice, own, scores), scores

    def _tensors_of(self, layer: int, expert: int):
        key = (layer, expert)
        return self.pool.tensors(key) if key in self.pool else self.pool.stream(key)

    def _experts(self, layer: int, x, chosen, weights):
        block = self.blocks[layer]

        def tensors_of(expert: int):
            return self._tensors_of(layer, expert)

        def compute():
            if block.layout == "scaled_input":
                return arithmetic.on_scaled_inputs(x, weights, chosen, block.act_fn, tensors_of)
            if block.layout == "dense_inline":
                return arithmetic.on_weighted_outputs(x, chosen, weights, block.num_experts,
                                                      block.act_fn, tensors_of)
            if block.layout == "deepseek_v2_router":
                return arithmetic.in_expert_sorted_order(x, chosen, weights, block.num_experts,
                                                         tensors_of, block.expert_fn)
            if block.layout == "token_choice_router":
                return arithmetic.scattered_from_sorted_samples(x, chosen, weights, tensors_of,
                                                                block.expert_fn)
            if block.layout == "deepseek_router":
                return arithmetic.in_token_order_float32(x, chosen, weights, block.num_experts,
                                                         tensors_of, block.expert_fn)
            config = getattr(block.fused_experts, "config", None)  # 4.x GPT-OSS has none
            implementation = "eager" if config is None else config._experts_implementation
            if implementation == "batched_mm":
                return arithmetic.batched_mm(x, chosen, weights, block.fused_format, tensors_of)
            if implementation == "grouped_mm":
                return arithmetic.grouped_mm(x, chosen, weights, block.fused_format, tensors_of)
            if implementation != "eager":
                raise UnsupportedModel(
                    f"{block.name}: experts implementation {implementation!r} is not one "
                    f"moe-router computes ({', '.join(arithmetic.FUSED_IMPLEMENTATIONS)})")
            return arithmetic.in_id_order(x, chosen, weights, block.num_experts, tensors_of,
                                          block.expert_fn)

        out = self._guarded(compute)
        self._maybe_guess_next(layer, x)
        return out

    def _maybe_guess_next(self, layer: int, x) -> None:
        if self.prefetch_mode == "gate_guess" and layer + 1 < len(self.blocks):
            self._guess_next(layer + 1, x)

    def _guarded(self, action):
        """Runs `action`; a failed load leaves the engine's view what the pool
        holds before the error goes on."""
        try:
            return action()
        except ExpertLoadError:
            self.engine.adopt(self.pool.holds())
            raise

    def _record(self, layer, chosen, weights) -> None:
        if self._recorder is not None:
            self._recorder.write(layer, chosen.cpu().numpy(),
                                 weights.detach().float().cpu().numpy())

    def _count(self, layer, needed, tokens):
        # An access is one expert a layer call needs, however many of the
        # batch's tokens chose it: what has to be in memory, as an engine's
        # cache counts it.
        c = self._counts
        hits = sum(needed.values())
        c["layer_calls"] += 1
        c["accesses"] += len(needed)
        c["hits"] += hits
        c["misses"] += len(needed) - hits
        if layer == 0:
            c["tokens"] += tokens
        guessed = self._guessed.pop(layer, None)
        if guessed is not None:
            c["guesses"] += len(needed)
            c["guesses_right"] += sum(e in guessed for e in needed)

    def _carry_out(self, step, wait_for_urgent: bool) -> None:
        for layer, expert in np.array(step.evictions):
            self.pool.evict((int(layer), int(expert)))
        for layer, expert in np.array(step.urgent):
            self.pool.load((int(layer), int(expert)), wait=wait_for_urgent)
        for layer, expert in np.array(step.prefetch):
            self.pool.load((int(layer), int(expert)), wait=False)

    def _guess_next(self, layer: int, x) -> None:
        # The next layer's gate on this layer's input: its likely experts,
        # loaded while this layer's output goes through the next attention.
        block = self.blocks[layer]
        with torch.no_grad():
            scores = block.routing.scores(block.gate_logits(x))
        guess = scores.choice.float().mean(dim=0).cpu().numpy()
        budget = min(self.top_k * x.shape[0], self.num_experts)
        self.engine.prefetch(layer, np.ascontiguousarray(guess, dtype=np.float32), budget,
                             self._prefetch_step)
        self._guessed[layer] = set(np.argsort(-guess)[:budget].tolist())
        self._guarded(lambda: self._carry_out(self._prefetch_step, wait_for_urgent=False))

    # -- the handle --------------------------------------------------------------

    def stats(self) -> dict:
        c = self._counts
        accesses = max(c["accesses"], 1)
        return {
            "hits": c["hits"], "misses": c["misses"], "accesses": c["accesses"],
            "hit_rate": c["hits"] / accesses, "ready_rate": c["ready"] / accesses,
            "loads": self.pool.loads, "evictions": self.pool.evictions,
            "streamed": self.pool.streamed, "failed_loads": self.pool.failed_loads,
            "bytes_moved": self.pool.bytes_moved, "load_wait_s": self.pool.load_wait_s,
            "tokens": c["tokens"], "slots": self.pool.slots, "expert_bytes": self.expert_bytes,
            "gate_guess_accuracy": c["guesses_right"] / c["guesses"] if c["guesses"] else None,
        }

    def holds(self):
        """The (layer, expert) pairs the device pool holds."""
        return self.pool.holds()

    def engine_view(self):
        """The (layer, expert) pairs the engine believes resident."""
        return sorted(tuple(k) for k in self.engine.residency())

    def flush(self, timeout_s: float = 10.0) -> bool:
        """With a server: sends what was routed and waits until the service
        folded it in; whether it did. Alone: nothing to send."""
        return self.engine.flush(timeout_s) if hasattr(self.engine, "flush") else True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unpatch()
        self.pool.close()
        if hasattr(self.store, "close"):
            self.store.close()
        for param, device in self._moved:
            param.data = param.data.to(device)
        if self._recorder is not None:
            self._recorder.close()
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def offload_experts(model: nn.Module, budget_bytes: int, device="cpu", server: Optional[str] = None,
                    bonus: Optional[float] = None, prefetch: Optional[str] = "gate_guess",
                    record: Optional[str] = None, eviction_policy: str = "",
                    model_name: Optional[str] = None, checkpoint: Optional[str] = None,
                    expert_server: Optional[str] = None) -> Offload:
    """Pages `model`'s experts through a device pool of `budget_bytes`.

    bonus: the cache bonus (None: the model's setting, moe-router's default
    without a server; 0 routes exactly as the model does). prefetch:
    "gate_guess" (the next layer's gate on this layer's input, and the
    router's runners-up), "coactivation" (what the fleet learned follows;
    needs a server) or None. server: a moe-routerd address to learn with
    over the Learn stream (the model registered as `model_name`, or the one
    of that name already there, with its settings, if its shape matches);
    without one the worker runs alone. record: a path to write the routing to, as a
    trace `moe-router replay` reads. checkpoint: a directory of safetensors
    files to read the experts from (checksum-verified, on each load) instead
    of the model's own expert tensors, which are then never read; it must
    match the model's names, shapes and dtype. expert_server: a moe-routerd
    address to fetch the experts from instead (FetchExpert, verified), where
    an operator registered `model_name` on the model's checkpoint.
    """
    if checkpoint is not None and expert_server is not None:
        raise ValueError("the experts come from a checkpoint or from an expert_server, not both")
    if prefetch not in PREFETCH_MODES:
        raise ValueError(f"prefetch must be one of {PREFETCH_MODES}, not {prefetch!r}")
    if prefetch == "coactivation" and server is None:
        raise ValueError("prefetch='coactivation' needs a server: co-activation is learned by "
                         "the fleet")
    if model.training:
        raise UnsupportedModel("the model is in training mode; offloading serves inference "
                               "(call model.eval())")
    blocks = find_moe_blocks(model)
    name = model_name or type(model).__name__.replace("ForCausalLM", "").lower() or "model"
    return Offload(model, blocks, int(budget_bytes), torch.device(device), server, bonus,
                   prefetch, record, eviction_policy, name, checkpoint, expert_server)
