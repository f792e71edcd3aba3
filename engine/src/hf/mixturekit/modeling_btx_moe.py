"""Modeling code of a Mixture-of-Experts written by the btx engine in MixtureKit's checkpoint
layout (config keys `moe_method`, `router_layers`, `router_layers_index`, `num_experts`,
`num_experts_per_tok`; MixtureKit's tensor names), so that transformers loads it with
`trust_remote_code=True` and MixtureKit's router trainer and visualiser read it.

The base model is __BASE_MODEL_CLASS__. Every routed module computes, per token,
    y = sum over the k largest router logits s of softmax(those k logits)_s * expert_s(x)
(MixtureKit's and Mixtral's top-k routing):
- moe_method "traditional": each layer's MLP is replaced by experts.J (the base model's MLP)
  behind one router `mlp.gate`;
- moe_method "btx": each projection listed in router_layers (e.g. "mlp.gate_proj") of each
  layer in router_layers_index is replaced by experts.expert_J behind its own router
  `<projection>.gate`, mixing on its own input.
In training with `alpha` > 0 (MixtureKit's config key) the output carries `aux_loss`, the mean
over the routers of alpha * E * sum_i f_i P_i (f_i: the share of the k routing slots sent to
expert i, P_i: expert i's mean router probability, over the attention mask's tokens), which
MixtureKit's trainer adds to the loss; with `labels` it is also added to `loss`.
"""
import functools
import inspect

import torch
from torch import nn
import transformers

from .configuration_btx_moe import BtxMoeConfig

_Base = getattr(transformers, "__BASE_MODEL_CLASS__")


def _route(module, x, gate, experts, top_k):
    """sum_s softmax(top-k logits)_s * experts[ids_s](x), over the last dimension of x; the
    router's choices are kept on `module` while its model collects them."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    logits = gate(flat)
    top, ids = torch.topk(logits, top_k, dim=-1)
    if module.collect:
        module.choices = (logits, ids)
    weights = torch.softmax(top.float(), dim=-1).to(flat.dtype)
    out = None
    for j, expert in enumerate(experts):
        rows, slots = torch.where(ids == j)
        if rows.numel() == 0:
            continue
        y = expert(flat[rows]) * weights[rows, slots, None]
        if out is None:
            out = flat.new_zeros(flat.shape[0], y.shape[-1])
        out.index_add_(0, rows, y)
    return out.reshape(*shape[:-1], out.shape[-1])


def _balance_loss(logits, ids, mask):
    """E * sum_i f_i P_i over the tokens `mask` keeps (all without one)."""
    probs = torch.softmax(logits.float(), dim=-1)
    slots = torch.zeros_like(probs).scatter_add_(1, ids, torch.ones_like(probs[:, : ids.shape[1]])) / ids.shape[1]
    weights = probs.new_ones(probs.shape[0]) if mask is None else mask.reshape(-1).to(probs)
    total = weights.sum().clamp(min=1)
    share = (slots * weights[:, None]).sum(0) / total
    mean_prob = (probs * weights[:, None]).sum(0) / total
    return probs.shape[1] * (share * mean_prob).sum()


def _target_share(labels, num_items_in_batch):
    """This batch's share of the accumulated batches' target tokens (transformers divides the
    language-modelling loss by their count): 1 without accumulation."""
    if num_items_in_batch is None:
        return 1.0
    targets = labels[..., 1:] if int(transformers.__version__.split(".")[0]) >= 5 else labels
    return (targets != -100).sum() / torch.as_tensor(num_items_in_batch, device=labels.device).clamp(min=1)


class RoutedLinear(nn.Module):
    """A projection with its own router (MixtureKit's BTX)."""

    def __init__(self, in_features, out_features, num_experts, top_k):
        super().__init__()
        self.in_features, self.out_features, self.top_k = in_features, out_features, top_k
        self.collect, self.choices = False, None
        self.gate = nn.Linear(in_features, num_experts, bias=False)
        self.experts = nn.ModuleDict({f"expert_{j}": nn.Linear(in_features, out_features, bias=False) for j in range(num_experts)})

    def forward(self, x):
        return _route(self, x, self.gate, list(self.experts.values()), self.top_k)


class TraditionalMoE(nn.Module):
    """An MLP of routed expert MLPs behind one router (Mixtral's layout)."""

    def __init__(self, config, mlp_class):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.collect, self.choices = False, None
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList([mlp_class(config) for _ in range(config.num_experts)])

    def forward(self, x):
        return _route(self, x, self.gate, self.experts, self.top_k)


class MixtureKitForCausalLM(_Base):
    config_class = BtxMoeConfig

    def __init__(self, config):
        super().__init__(config)
        layers = self.model.layers
        routed_layers = set(config.router_layers_index)
        for i, layer in enumerate(layers):
            if config.moe_method == "traditional":
                layer.mlp = TraditionalMoE(config, type(layer.mlp))
            elif config.moe_method == "btx" and i in routed_layers:
                for name in config.router_layers:
                    parent_name, attr = name.rsplit(".", 1)
                    parent = layer.get_submodule(parent_name)
                    plain = getattr(parent, attr)
                    setattr(parent, attr, RoutedLinear(plain.in_features, plain.out_features, config.num_experts, config.num_experts_per_tok))
            elif config.moe_method != "btx":
                raise ValueError(f"moe_method {config.moe_method!r}: this modeling code computes 'traditional' and 'btx'")
        self.post_init()

    def _routers(self):
        return [m for m in self.modules() if isinstance(m, (RoutedLinear, TraditionalMoE))]

    def set_load_balancing_alpha(self, alpha):
        """The weight of the load balancing loss (MixtureKit's trainer sets it)."""
        self.config.alpha = alpha

    @functools.wraps(_Base.forward)
    def forward(self, *args, **kwargs):
        routers = self._routers()
        alpha = float(getattr(self.config, "alpha", 0.0) or 0.0)
        for m in routers:
            m.collect, m.choices = self.training and alpha > 0, None
        try:
            outputs = super().forward(*args, **kwargs)
        finally:
            choices = [m.choices for m in routers if m.choices is not None]
            for m in routers:
                m.collect, m.choices = False, None
        if not choices or isinstance(outputs, tuple):
            return outputs
        named = dict(zip(list(inspect.signature(_Base.forward).parameters)[1:], args), **kwargs)
        mask = named.get("attention_mask")
        aux = []
        for logits, ids in choices:
            keep = mask if mask is not None and mask.dim() == 2 and mask.numel() == logits.shape[0] else None
            aux.append(alpha / len(routers) * _balance_loss(logits, ids, keep))
        outputs["aux_loss"] = torch.stack(aux).sum()
        labels = named.get("labels")
        if labels is not None and outputs.loss is not None:
            weighted = outputs["aux_loss"] * _target_share(labels, named.get("num_items_in_batch"))
            outputs["loss"] = outputs.loss + weighted.to(outputs.loss.dtype)
        return outputs
