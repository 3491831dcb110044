"""Per-decoder-layer training switches: gradient checkpointing that keeps P-tuning's prefix, on all
layers or only the first N, and torch.compile one layer at a time (regional compilation).

Transformers' own checkpointing (`gradient_checkpointing_enable`) sets `past_key_values=None` in
every checkpointed layer, which drops P-tuning's learned prefix (the seed crashed there with a shape
mismatch). Here the layer keeps its cache: the prefix is the cache's content when the layer first
runs, and the recomputation in backward restores exactly that content before running again, so
forward and recomputation see the same keys and values.
"""

from __future__ import annotations

COMPILE_BACKEND = "inductor"  # torch.compile's backend for the layers (tests swap in a failing one)


def decoder_layers(model) -> list | None:
    """The repeated transformer blocks of a (PEFT-wrapped) causal LM, or None if none are found."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    for module in base.modules():
        if count and isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return list(module)
    return None


def _checkpointed(layer, index: int, forward):
    import torch
    from torch.utils.checkpoint import checkpoint

    def run(*args, **kwargs):
        if not (layer.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        cache = kwargs.get("past_key_values")
        slots = getattr(cache, "layers", None)
        if not slots or index >= len(slots):
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        slot = slots[index]  # P-tuning: this layer's prefix keys/values; the layer appends to them
        before = dict(vars(slot))

        def replay(*a, **kw):
            vars(slot).update(before)  # the recomputation must see the prefix alone, as the forward did
            return forward(*a, **kw)

        return checkpoint(replay, *args, use_reentrant=False, **kwargs)

    return run


def apply_layer_switches(model, checkpoint_count: int, compile_layers: bool, fallback: bool = False) -> int:
    """Compile and/or checkpoint the decoder layers in place; returns how many layers are checkpointed.

    `checkpoint_count`: 0 none, -1 all, N the first N (their inputs are kept, everything else is
    recomputed in backward; the other layers keep their activations: faster, more memory).
    `fallback` (torch_compile: auto): a layer that fails to compile (no C compiler, an unsupported
    GPU) runs eagerly with a warning instead of stopping the run.
    """
    import torch

    layers = decoder_layers(model)
    if layers is None:
        if checkpoint_count or compile_layers:
            raise RuntimeError(
                "Could not find the model's decoder layers: set gradient_checkpointing and torch_compile "
                "to 'off' for this model."
            )
        return 0
    count = len(layers) if checkpoint_count < 0 else min(checkpoint_count, len(layers))
    if compile_layers:
        # one compiled graph serves every layer (same code, parameters passed as inputs); allow a few
        # recompilations for new sequence lengths and padding masks before falling back to eager
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        torch._dynamo.config.suppress_errors = fallback
    for index, layer in enumerate(layers):
        forward = torch.compile(layer.forward, backend=COMPILE_BACKEND) if compile_layers else layer.forward
        if index < count:
            forward = _checkpointed(layer, index, forward)
        if compile_layers or index < count:
            layer.forward = forward
    return count
