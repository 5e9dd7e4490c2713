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


class TopKThenSoftmaxRouting:
    """GPT-OSS's rule: the top-k of the logits (sorted, as torch.topk
    gives them), their softmax in the logits' dtype as the weights."""

    def __init__(self, top_k: int):
        self.top_k = top_k
        self.rule = {"preset": "gpt_oss"}
        self.choice_bias: Optional[np.ndarray] = None

    def scores(self, logits: torch.Tensor) -> Scores:
        return Scores(choice=logits, weighing=logits)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, self.top_k, dim=-1)[1]

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        values = scores.weighing.gather(1, chosen)
        return torch.nn.functional.softmax(values, dim=1, dtype=values.dtype)


class SigmoidOfTopKRouting:
    """Llama 4's rule: the top-k of the logits (top-1 in its models), each
    weighted by the sigmoid of its logit. The model takes the sigmoid of all
    experts' row (-inf where not chosen) in float32 and casts it back to the
    logits' dtype; `dense_weights` does the same, since PyTorch's
    vectorised sigmoid can round a gathered few differently."""

    def __init__(self, top_k: int):
        self.top_k = top_k
        self.rule = {"preset": "llama4"}
        self.choice_bias: Optional[np.ndarray] = None

    def scores(self, logits: torch.Tensor) -> Scores:
        return Scores(choice=logits, weighing=logits)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, self.top_k, dim=1)[1]

    def dense_weights(self, scores: Scores, chosen: torch.Tensor) -> torch.Tensor:
        logits = scores.weighing
        dense = torch.full_like(logits, float("-inf")).scatter_(1, chosen,
                                                                logits.gather(1, chosen))
        return torch.sigmoid(dense.float()).to(dense.dtype)

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        return self.dense_weights(scores, chosen).gather(1, chosen)


class GroupedSigmoidRouting:
    """DeepSeek-V3's rule (also GLM-4.5's, Kimi K2's with one group):
    sigmoid scores of float32 logits; the choice on score + bias, limited to
    the best `kept` of `groups` groups (a group's score: the sum of its two
    best biased scores; the other groups' experts masked with 0.0, so one of
    them can still win when every allowed biased score is negative); top-k
    unsorted; weights the unbiased scores, over their sum + 1e-20 when
    `normalize`, times `scaling`."""

    def __init__(self, top_k: int, groups: int, kept: int, normalize: bool, scaling: float,
                 bias: torch.Tensor):
        self.top_k = top_k
        self.groups = groups
        self.kept = kept
        self.normalize = normalize
        self.scaling = scaling
        self.bias = bias
        self.rule = {"preset": "deepseek_v3", "num_groups": groups, "kept_groups": kept,
                     "normalization": "sum_plus_epsilon" if normalize else "none",
                     "scaling": float(scaling)}
        self.choice_bias = bias.detach().float().cpu().numpy()

    def scores(self, logits: torch.Tensor) -> Scores:
        sigmoid = logits.sigmoid()
        choice = sigmoid + self.bias
        experts = choice.shape[-1]
        per_group = experts // self.groups
        group_scores = choice.view(-1, self.groups, per_group).topk(2, dim=-1)[0].sum(dim=-1)
        kept = torch.topk(group_scores, k=self.kept, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, kept, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, self.groups, per_group).reshape(
            -1, experts)
        return Scores(choice=choice.masked_fill(~score_mask.bool(), 0.0), weighing=sigmoid)

    def own_choice(self, scores: Scores) -> torch.Tensor:
        return torch.topk(scores.choice, k=self.top_k, dim=-1, sorted=False)[1]

    def weights(self, scores: Scores, chosen: torch.Tensor, hidden_dtype) -> torch.Tensor:
        weights = scores.weighing.gather(1, chosen)
        if self.normalize:
            denominator = weights.sum(dim=-1, keepdim=True) + 1e-20
            weights /= denominator
        return weights * self.scaling


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
