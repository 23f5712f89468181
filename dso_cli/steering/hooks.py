"""Registering one forward hook per targeted module, removed on exit (exceptions included), and the
hidden state inside a module's output (decoder layers return a tuple whose first entry it is)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from dso_cli.errors import DsoError


@contextmanager
def hooks_on(
    model: nn.Module, per_module: Mapping[str, Any], make_hook: Callable[[Any], Callable], *, pre: bool = False
) -> Iterator[None]:
    """For each ``module name -> payload``, register ``make_hook(payload)`` (a pre-hook with ``pre``)."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for name, payload in per_module.items():
            if name not in modules:
                raise DsoError(f"the model has no module {name!r} that this steering artifact targets")
            module = modules[name]
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(make_hook(payload)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def output_tensor(output: Any) -> Tensor:
    """A module's hidden-state output (decoder layers may return a tuple whose first entry it is)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, hidden: Tensor) -> Any:
    """``output`` with its hidden state replaced, in the same shape (tuple or tensor)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
