"""What the model files take from transformers 5, with a fallback for each piece that transformers 4.48 to 4.57 lacks.

A leanbert checkpoint ships its model code, and a user may load it with `trust_remote_code=True` on any transformers
from 4.48 on. Each name below is imported from where transformers 5 keeps it; only where that import fails (an
older transformers) is the fallback defined, so on 5.x nothing here changes what runs. Features are detected,
never version strings parsed. Where an old version cannot give a feature, it is refused with transformers' own
error, never replaced by something that computes a different result:

- gradient checkpointing needs `GradientCheckpointingLayer` (4.52 on): below it, models declare no support and
  `gradient_checkpointing_enable()` raises;
- output capture (`output_hidden_states`, `output_attentions`) is done by forward hooks on the classes a model's
  `_can_record_outputs` names, as transformers 5 does, so the outputs are the same on every version;
- masks: an additive `(B, 1, L, L)` float mask, which eager and SDPA attention take on every 4.x (flash attention
  gets the `(B, L)` padding mask it takes there).

This file ships next to each checkpoint (remote code): it imports only torch and transformers.
"""

import functools
from types import SimpleNamespace
from typing import TypedDict

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

try:
    from transformers import initialization as init
except ImportError:  # transformers 4: torch's own initializers, which these models call with the same arguments
    def _copy(tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tensor.copy_(other)

    init = SimpleNamespace(normal_=nn.init.normal_, zeros_=nn.init.zeros_, ones_=nn.init.ones_, copy_=_copy)

try:
    from transformers.utils import TransformersKwargs
except ImportError:  # transformers < 4.54: used in type hints only
    class TransformersKwargs(TypedDict, total=False):
        pass

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # transformers < 4.52: no checkpointing; see `CAN_CHECKPOINT`
    GradientCheckpointingLayer = nn.Module

# Whether layers can be checkpointed here: the models' `supports_gradient_checkpointing`.
CAN_CHECKPOINT = GradientCheckpointingLayer is not nn.Module

try:
    from transformers.masking_utils import create_bidirectional_mask
except ImportError:  # transformers 4
    def create_bidirectional_mask(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                                  **kwargs) -> torch.Tensor | None:
        """(B, L) mask of 1 (read) and 0 (padding) -> additive (B, 1, L, L) float mask: 0 where a key may be read,
        the dtype's minimum where not. Flash attention takes the (B, L) mask itself, or None without padding."""
        if attention_mask is None:
            return None
        if "flash" in (config._attn_implementation or ""):
            return attention_mask if (attention_mask == 0).any() else None
        dtype, length = inputs_embeds.dtype, inputs_embeds.shape[1]
        readable = attention_mask[:, None, None, :].bool()  # (B, 1, 1, L)
        additive = torch.zeros(readable.shape, dtype=dtype, device=inputs_embeds.device)
        return additive.masked_fill(~readable, torch.finfo(dtype).min).expand(-1, 1, length, -1)


if not hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers 4, which registers no "eager"
    _REGISTERED = ALL_ATTENTION_FUNCTIONS
    ALL_ATTENTION_FUNCTIONS = SimpleNamespace(get_interface=lambda name, default: _REGISTERED.get(name, default))


def wants_dict(model, return_dict: bool | None) -> bool:
    """`return_dict` if given, else the config's (`use_return_dict` on transformers 4)."""
    if return_dict is not None:
        return return_dict
    return getattr(model.config, "use_return_dict", getattr(model.config, "return_dict", True))


try:
    from transformers.utils.generic import can_return_tuple
except ImportError:  # transformers < 4.50
    def can_return_tuple(forward):
        """Turn the forward's `ModelOutput` into a tuple when `return_dict` (given or from the config) is False."""
        @functools.wraps(forward)
        def wrapper(self, *args, return_dict: bool | None = None, **kwargs):
            outputs = forward(self, *args, **kwargs)
            return outputs if wants_dict(self, return_dict) else outputs.to_tuple()

        return wrapper

try:
    from transformers.utils.generic import merge_with_config_defaults
    from transformers.utils.output_capturing import capture_outputs
except ImportError:  # transformers 4
    def merge_with_config_defaults(forward):
        """transformers 5 fills generation arguments (`use_cache`, ...) from the config; an encoder takes none."""
        return forward

    def capture_outputs(forward):
        """`output_hidden_states` and `output_attentions` (given, or from the config) as transformers 5 collects
        them: the first layer's input and each layer's output (the classes `_can_record_outputs["hidden_states"]`
        names), each attention module's weights (`_can_record_outputs["attentions"]`, the second of its outputs),
        through forward hooks that live for this call only."""
        @functools.wraps(forward)
        def wrapper(self, *args, return_dict: bool | None = None, **kwargs):
            collected = {}
            for key in self._can_record_outputs:
                flag = kwargs.pop(f"output_{key}", None)
                if flag if flag is not None else getattr(self.config, f"output_{key}", False):
                    collected[key] = []

            def recorder(key):
                def hook(module, inputs, output):
                    if key == "hidden_states" and not collected[key]:
                        collected[key].append(inputs[0])  # the embeddings: the first layer's input
                    value = output[0 if key == "hidden_states" else 1] if isinstance(output, tuple) else output
                    if value is not None:
                        collected[key].append(value)
                return hook

            hooks = [module.register_forward_hook(recorder(key)) for key in collected
                     for module in self.modules() if isinstance(module, self._can_record_outputs[key])]
            try:
                outputs = forward(self, *args, **kwargs)
            finally:
                for hook in hooks:
                    hook.remove()
            for key, values in collected.items():
                outputs[key] = tuple(values)
            return outputs if wants_dict(self, return_dict) else outputs.to_tuple()

        return wrapper
