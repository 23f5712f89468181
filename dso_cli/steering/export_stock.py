"""Where a norm's shift ``ωb`` can live in a stock checkpoint: in the biases of the linear layers that
read the norm's output.

A linear layer reading ``y + c`` computes ``W(y + c) + β = Wy + (β + Wc)``, so a shift ``c`` of a norm
without a bias of its own (RMSNorm) moves exactly into the biases of its consumers: Llama/Mistral's
q/k/v projections (``attention_bias``) and gate/up projections (``mlp_bias``), Qwen2's q/k/v (biased
already), and so on. Consumers are found by tracing one forward pass (a linear whose input *is* the
norm's output tensor), and a config flag that gives them biases by building the architecture with
each boolean ``*bias*`` flag turned on (on the meta device: no memory). A norm whose output also
reaches something else (a final norm before an unbiased, tied output head; Gemma's post-norms, added
to the residual stream) has no stock place for its shift: the export names it and needs its modeling
file, unless the artifact keeps ``b = 0`` there (DSO's ``steering_method.stock_export=true``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

FLAG_WORD = "bias"


@dataclass(frozen=True)
class ShiftPlan:
    """Where each hooked norm's shift goes in a stock checkpoint."""

    native: list[str] = field(default_factory=list)  # norms with a bias of their own
    consumers: dict[str, list[str]] = field(default_factory=dict)  # norm -> linears that take its shift
    flags: dict[str, bool] = field(default_factory=dict)  # config flags (``text_config.`` for a VLM) to turn on
    new_biases: list[str] = field(default_factory=list)  # linears that gain a (zero-initialised) bias
    unplaced: list[str] = field(default_factory=list)  # norms whose shift needs the modeling file

    @property
    def stock(self) -> bool:
        return not self.unplaced


def _norm_has_bias(module: nn.Module) -> bool:
    return isinstance(getattr(module, "bias", None), torch.Tensor)


def trace_consumers(model: nn.Module, norms: Iterable[str]) -> dict[str, list[str]]:
    """For each norm, the linear layers whose input is that norm's output tensor, on one short text
    forward pass (a norm the pass does not reach, or read by no linear, has none)."""
    modules = dict(model.named_modules())
    outputs: dict[int, tuple[str, Tensor]] = {}  # the tensor is kept alive, so its id is not reused
    found: dict[str, list[str]] = {name: [] for name in norms}
    handles = []

    def on_norm(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            outputs[id(output)] = (name, output)

        return hook

    def on_linear(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            seen = outputs.get(id(inputs[0])) if inputs else None
            if seen is not None and seen[1] is inputs[0] and name not in found[seen[0]]:
                found[seen[0]].append(name)

        return hook

    try:
        for name in found:
            handles.append(modules[name].register_forward_hook(on_norm(name)))
        for name, module in modules.items():
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_pre_hook(on_linear(name)))
        device = model.get_input_embeddings().weight.device
        ids = torch.tensor([[1, 2, 3, 4]], device=device)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _configs(config) -> list[tuple[str, object]]:
    """The config and its language sub-config (a VLM's ``text_config``), with their key prefixes."""
    found = [("", config)]
    text = getattr(config, "text_config", None)
    if text is not None and text is not config:
        found.append(("text_config.", text))
    return found


def bias_flags(model: nn.Module) -> dict[str, set[str]]:
    """``flag -> linears that gain a bias`` for every boolean ``*bias*`` config flag that is off."""
    unbiased = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.bias is None}
    flags: dict[str, set[str]] = {}
    for prefix, sub in _configs(model.config):
        for key, value in sub.to_dict().items():
            if FLAG_WORD not in key or value is not False:
                continue
            config = copy.deepcopy(model.config)
            target = config if not prefix else getattr(config, prefix.rstrip("."))
            setattr(target, key, True)
            try:
                with torch.device("meta"):
                    skeleton = type(model)(config)
            except Exception:  # a flag this class does not build with: not a way to add biases
                continue
            gained = {n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear) and m.bias is not None}
            if gained & unbiased:
                flags[prefix + key] = gained & unbiased
    return flags


def plan_shifts(model: nn.Module, norms: Iterable[str]) -> ShiftPlan:
    """Where each of ``norms``' shift goes: its own bias, its consumers' biases (turning on the fewest
    config flags), or nowhere in the stock architecture (``unplaced``)."""
    modules = dict(model.named_modules())
    norms = list(norms)
    native = [n for n in norms if _norm_has_bias(modules[n])]
    consumers = trace_consumers(model, [n for n in norms if n not in native])
    available = bias_flags(model)
    flags: dict[str, bool] = {}
    gained: set[str] = set()
    placed: dict[str, list[str]] = {}
    unplaced: list[str] = []
    for name in norms:
        if name in native:
            continue
        linears = consumers.get(name) or []
        missing = [lin for lin in linears if modules[lin].bias is None and lin not in gained]
        for flag, adds in sorted(available.items(), key=lambda kv: len(kv[1])):
            if missing and set(missing) & adds:
                flags[flag] = True
                gained |= adds
                missing = [lin for lin in missing if lin not in gained]
        if linears and not missing:
            placed[name] = linears
        else:
            unplaced.append(name)
    return ShiftPlan(native, placed, flags, sorted(gained), unplaced)


def write_shifts(model: nn.Module, plan: ShiftPlan, shifts: Mapping[str, Tensor]) -> None:
    """Give ``plan.new_biases`` a zero bias and add ``W·shift`` of every placed norm to its consumers'
    biases (float64, stored in the weight's dtype); turn ``plan.flags`` on in the config, so the saved
    checkpoint builds those biases when loaded as the stock class."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in plan.new_biases:
            linear = modules[name]
            if linear.bias is None:
                linear.bias = nn.Parameter(
                    torch.zeros(linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype),
                    requires_grad=False,
                )
        for norm, linears in plan.consumers.items():
            shift = shifts.get(norm)
            if shift is None:
                continue
            for name in linears:
                linear = modules[name]
                added = linear.weight.detach().double().cpu() @ shift.double().cpu()
                linear.bias.copy_((linear.bias.detach().double().cpu() + added).to(linear.bias.dtype))
    for flag in plan.flags:
        prefix, _, key = flag.rpartition(".")
        setattr(model.config if not prefix else getattr(model.config, prefix), key, True)
