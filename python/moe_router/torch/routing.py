"""How a model routes, in its own PyTorch arithmetic, beside the rule the
engine routes by.

The engine chooses (cache-aware); the tensors a block returns are computed
here as the model computes them: its choice scores, its own top-k (for its
tie-breaking and position order) and its weights for whatever experts were
chosen. `reconcile` takes the engine's choice, row by row, except where it
equals the model's own up to ties, which are then broken as the model's
`torch.topk` breaks them on its device.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass
class Scores:
    """One layer call's routing quantities, per token."""
    choice: torch.Tensor  # (tokens, experts): what the model takes the top-k of
    weighing: torch.Tensor  # (tokens, experts): what the weights are gathered from
    # What the engine is given in place of the logits, where its rule takes
    # the model's own scores (score "logits", selection "top_k").
    given: Optional[torch.Tensor] = None


class SoftmaxRouting:
    """Softmax over the gate logits in float32, top-k of it, the weights
    the chosen probabilities, renormalised when `normalize` (Mixtral, the
    Qwen-MoE family and OLMoE, per their norm_topk_prob). Transformers 4.x
    casts the weights to the hidden dtype; 5.x keeps float32.
    `float_first`: 5.x Mixtral's softmax(logits.float()), where the others
    write softmax(logits, dtype=float)."""

    def __init__(self, top_k: int, normalize: bool, cast_weights: bool, float_first: bool):
        self.top_k = top_k
        self.normalize = normalize
        self.cast_weights = cast_weights
        self.float_first = float_first
        self.rule = {"preset": "mixtral" if normalize else "qwen_no_norm"}
        self.choice_bias: Optional[np.ndarray] = None

    def scores(self, logits: torch.Tensor) -> Scores:
        if self.float_first:
            probs = torch.softmax(logits.float(), dim=-1)
        else:
            probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        return Scores(choice=probs, weighing=probs)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, self.top_k, dim=-1)[1]

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        weights = scores.weighing.gather(1, chosen)
        if self.normalize:
            weights /= weights.sum(dim=-1, keepdim=True)
        return weights.to(hidden_dtype) if self.cast_weights else weights


class PNormSoftmaxRouting:
    """DBRX's rule (4.x): the softmax of the logits in float32, its top-k
    over their p-norm (as they are when p is None), cast to the hidden
    dtype."""

    def __init__(self, top_k: int, p: Optional[float]):
        self.top_k = top_k
        self.p = p
        self.rule = {"preset": "qwen_no_norm"} if p is None else \
            {"preset": "dbrx", "normalization_param": float(p)}
        self.choice_bias: Optional[np.ndarray] = None

    def scores(self, logits: torch.Tensor) -> Scores:
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        return Scores(choice=probs, weighing=probs)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, self.top_k, dim=-1)[1]

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        weights = scores.weighing.gather(1, chosen)
        if self.p is not None:
            weights = weights / torch.norm(weights, p=self.p, dim=-1, keepdim=True)
        return weights.to(hidden_dtype)


class _TopKOfLogits:
    """Rules that choose the top-k of the logits themselves (sorted, as
    torch.topk gives them) and weigh the chosen logits."""

    def __init__(self, top_k: int, preset: str):
        self.top_k = top_k
        self.rule = {"preset": preset}
        self.choice_bias: Optional[np.ndarray] = None

    def scores(self, logits: torch.Tensor) -> Scores:
        return Scores(choice=logits, weighing=logits)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, self.top_k, dim=-1)[1]


class TopKThenSoftmaxRouting(_TopKOfLogits):
    """GPT-OSS's rule (and Granite-MoE's): the softmax of the chosen
    logits, in their dtype (Granite-MoE's: float32, then cast to the hidden
    dtype, `cast_weights`)."""

    def __init__(self, top_k: int, cast_weights: bool = False):
        super().__init__(top_k, "gpt_oss")
        self.cast_weights = cast_weights

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        values = scores.weighing.gather(1, chosen)
        weights = torch.nn.functional.softmax(values, dim=1, dtype=values.dtype)
        return weights.to(hidden_dtype) if self.cast_weights else weights

    def dense_weights(self, scores: Scores, chosen: torch.Tensor, weights) -> torch.Tensor:
        """4.x's router scatters the weights over all experts."""
        return torch.zeros_like(scores.weighing).scatter_(1, chosen, weights)


class SigmoidOfTopKRouting(_TopKOfLogits):
    """Llama 4's rule (top-1 in its models): each chosen expert weighted by
    the sigmoid of its logit. The model takes the sigmoid of all experts'
    row (-inf where not chosen) in float32 and casts it back to the logits'
    dtype; `dense_weights` does the same, since PyTorch's vectorised sigmoid
    can round a gathered few differently."""

    def __init__(self, top_k: int):
        super().__init__(top_k, "llama4")

    def dense_weights(self, scores: Scores, chosen: torch.Tensor, weights=None) -> torch.Tensor:
        logits = scores.weighing
        dense = torch.full_like(logits, float("-inf")).scatter_(1, chosen,
                                                                logits.gather(1, chosen))
        return torch.sigmoid(dense.float()).to(dense.dtype)

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        return self.dense_weights(scores, chosen).gather(1, chosen)


def _keep_best_groups(choice: torch.Tensor, group_scores: torch.Tensor,
                      kept: int) -> torch.Tensor:
    """The group limit of DeepSeek-V3 and V2 (each scores its groups its own
    way): the `kept` best groups' experts keep their choice scores, the
    others' are set to 0.0, in the models' own operations."""
    tokens, groups = group_scores.shape
    best = torch.topk(group_scores, k=kept, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, best, 1)
    score_mask = group_mask.unsqueeze(-1).expand(tokens, groups,
                                                 choice.shape[-1] // groups).reshape(tokens, -1)
    return choice.masked_fill(~score_mask.bool(), 0.0)


class GroupedSigmoidRouting:
    """DeepSeek-V3's rule (also GLM-4.5's and the other families that reuse
    its code, Kimi K2's with one group) and MiniMax-M2's: sigmoid scores of
    float32 logits; the choice on score + bias, limited to the best `kept`
    of `groups` groups (a group's score: the sum of its two best biased
    scores; the other groups' experts masked with 0.0, so one of them can
    still win when every allowed biased score is negative); top-k unsorted;
    weights the unbiased scores, over their sum + 1e-20
    ("sum_plus_epsilon"), their sum ("sum", MiniMax-M2) or as they are
    ("none"), times `scaling`."""

    def __init__(self, top_k: int, bias: torch.Tensor, groups: int = 1, kept: int = 1,
                 normalization: str = "sum_plus_epsilon", scaling: float = 1.0,
                 preset: str = "deepseek_v3", sorted_top_k: bool = False):
        self.top_k = top_k
        self.sorted_top_k = sorted_top_k  # AFMoE's top-k is sorted
        self.groups = groups
        self.kept = kept
        self.normalization = normalization
        self.scaling = scaling
        self.bias = bias
        self.rule = {"preset": "deepseek_v3", "num_groups": groups, "kept_groups": kept,
                     "normalization": normalization, "scaling": float(scaling)} \
            if preset == "deepseek_v3" else {"preset": preset}
        self.choice_bias = bias.detach().float().cpu().numpy()

    def scores(self, logits: torch.Tensor) -> Scores:
        sigmoid = logits.float().sigmoid()
        choice = sigmoid + self.bias
        if self.groups == 1:  # the mask keeps every expert: the same numbers
            return Scores(choice=choice, weighing=sigmoid)
        group_scores = choice.view(choice.shape[0], self.groups, -1).topk(2, dim=-1)[0].sum(dim=-1)
        return Scores(choice=_keep_best_groups(choice, group_scores, self.kept),
                      weighing=sigmoid)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, k=self.top_k, dim=-1, sorted=self.sorted_top_k)[1]

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        weights = scores.weighing.gather(1, chosen)
        if self.normalization == "sum_plus_epsilon":
            denominator = weights.sum(dim=-1, keepdim=True) + 1e-20
            weights /= denominator
        elif self.normalization == "sum":
            weights /= weights.sum(dim=-1, keepdim=True)
        return weights * self.scaling if self.normalization != "sum" else weights


class ModelDtypeSigmoidRouting:
    """LFM2-MoE's rule (5.x): the sigmoid of the logits in their own dtype;
    the choice on it plus the block's float32 expert_bias when it has one
    (the sum in float32), top-k sorted; the weights the chosen sigmoids,
    over their sum + 1e-6 when `normalize`, times `scaling`, in the logits'
    dtype. In bfloat16 a float32 sigmoid, which the engine's `sigmoid`
    score takes, would separate values the model rounds together and choose
    otherwise where the bias decides; so the engine is given the model's
    own sigmoid, in float32, and takes it as the score."""

    def __init__(self, top_k: int, bias: Optional[torch.Tensor], normalize: bool,
                 scaling: float):
        self.top_k = top_k
        self.bias = bias
        self.normalize = normalize
        self.scaling = scaling
        self.rule = {"score": "logits", "choice_bias": bias is not None, "selection": "top_k",
                     "normalization": "sum_plus_epsilon" if normalize else "none",
                     "normalization_param": 1e-6, "scaling": float(scaling)}
        self.choice_bias = None if bias is None else bias.detach().float().cpu().numpy()

    def scores(self, logits: torch.Tensor) -> Scores:
        sigmoid = logits.sigmoid()
        choice = sigmoid if self.bias is None else sigmoid + self.bias
        return Scores(choice=choice, weighing=sigmoid, given=sigmoid.float())

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, k=self.top_k, dim=-1)[1]

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        weights = scores.weighing.gather(1, chosen)
        if self.normalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)
        return weights * self.scaling


class GroupLimitedSoftmaxRouting:
    """DeepSeek-V2's rule: the softmax of float32 logits; `greedy` takes its
    top-k, `group_limited_greedy` first keeps the best `kept` of `groups`
    groups by their best probability and masks the rest with 0.0; top-k
    unsorted; the weights the chosen (masked) values times `scaling`, not
    renormalised."""

    def __init__(self, top_k: int, method: str, groups: int, kept: int, scaling: float):
        self.top_k = top_k
        self.grouped = method == "group_limited_greedy"
        self.groups = groups
        self.kept = kept
        self.scaling = scaling
        self.rule = {"preset": "deepseek_v2", "num_groups": groups, "kept_groups": kept,
                     "scaling": float(scaling)} if self.grouped else \
            {"preset": "qwen_no_norm", "scaling": float(scaling)}
        self.choice_bias: Optional[np.ndarray] = None

    def scores(self, logits: torch.Tensor) -> Scores:
        probs = logits.reshape(-1, logits.shape[-1]).softmax(dim=-1, dtype=torch.float32)
        if not self.grouped:
            return Scores(choice=probs, weighing=probs)
        group_scores = probs.view(probs.shape[0], self.groups, -1).max(dim=-1).values
        masked = _keep_best_groups(probs, group_scores, self.kept)
        return Scores(choice=masked, weighing=masked)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, k=self.top_k, dim=-1, sorted=False)[1]

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        return scores.weighing.gather(1, chosen) * self.scaling


class BiasedSoftmaxRouting:
    """ERNIE 4.5's rule: the softmax of float32 logits in float32; the choice
    on the probabilities plus moe_statics' bias (top-k sorted); the weights
    the unbiased probabilities over max(their sum, moe_norm_min), cast to
    the hidden dtype."""

    def __init__(self, top_k: int, bias: torch.Tensor, norm_min: float):
        self.top_k = top_k
        self.bias = bias  # (1, experts), squeezed as moe_statics does
        self.norm_min = norm_min
        self.rule = {"preset": "ernie4_5", "normalization_param": float(norm_min)}
        self.choice_bias = bias.detach().float().reshape(-1).cpu().numpy()

    def scores(self, logits: torch.Tensor) -> Scores:
        probs = torch.softmax(logits, dim=1, dtype=torch.float)
        return Scores(choice=probs + self.bias.squeeze(), weighing=probs)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, self.top_k, dim=-1)[1]

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        weights = torch.gather(scores.weighing, dim=-1, index=chosen)
        weights = weights / torch.clamp(weights.sum(dim=-1, keepdim=True), min=self.norm_min)
        return weights.to(hidden_dtype)


def reconcile(engine_choice: np.ndarray, own: torch.Tensor, scores: Scores) -> torch.Tensor:
    """The experts a call computes, (tokens, top_k): per token the engine's,
    unless they are the model's own up to ties (the same choice scores), in
    which case the model's own row, in its order."""
    own_np = own.cpu().numpy()
    same = (np.sort(own_np, axis=1) == np.sort(engine_choice, axis=1)).all(axis=1)
    if not same.all():
        rows = np.flatnonzero(~same)
        choice = scores.choice[torch.from_numpy(rows)]
        engine_values = choice.gather(1, torch.from_numpy(engine_choice[rows])).sort(dim=1)[0]
        own_values = choice.gather(1, own[torch.from_numpy(rows)]).sort(dim=1)[0]
        tied = (engine_values == own_values).all(dim=1).numpy()
        same[rows[tied]] = True
    if same.all():
        return own
    chosen = own_np.copy()
    chosen[~same] = engine_choice[~same]
    return torch.from_numpy(chosen).to(own.device)
