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
"""
import torch
from torch import nn
import transformers

from .configuration_btx_moe import BtxMoeConfig

_Base = getattr(transformers, "__BASE_MODEL_CLASS__")


def _route(x, gate, experts, top_k):
    """sum_s softmax(top-k logits)_s * experts[ids_s](x), over the last dimension of x."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    top, ids = torch.topk(gate(flat), top_k, dim=-1)
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


class RoutedLinear(nn.Module):
    """A projection with its own router (MixtureKit's BTX)."""

    def __init__(self, in_features, out_features, num_experts, top_k):
        super().__init__()
        self.in_features, self.out_features, self.top_k = in_features, out_features, top_k
        self.gate = nn.Linear(in_features, num_experts, bias=False)
        self.experts = nn.ModuleDict({f"expert_{j}": nn.Linear(in_features, out_features, bias=False) for j in range(num_experts)})

    def forward(self, x):
        return _route(x, self.gate, list(self.experts.values()), self.top_k)


class TraditionalMoE(nn.Module):
    """An MLP of routed expert MLPs behind one router (Mixtral's layout)."""

    def __init__(self, config, mlp_class):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList([mlp_class(config) for _ in range(config.num_experts)])

    def forward(self, x):
        return _route(x, self.gate, self.experts, self.top_k)


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
