"""The modeling file of an export whose norms need an added bias: generated from the stock class, recorded
by sha256 in ``config.json``, and checked before any ``trust_remote_code`` load runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from dso_cli.errors import DsoError
from dso_cli.models.remote_code import BIAS_MODULES_KEY
from dso_cli.version import __version__


def auto_class_name(model: nn.Module) -> str:
    """The Auto class that loads this model: vision-language models (a ``vision_config``) load with
    ``AutoModelForImageTextToText``, as :func:`dso_cli.models.loading.load_model` does."""
    vision = getattr(model.config, "vision_config", None) is not None
    return "AutoModelForImageTextToText" if vision else "AutoModelForCausalLM"


def modeling_source(base: type) -> tuple[str, str]:
    """(class name, source of :data:`MODELING_FILE`): a subclass of ``base`` that adds the biases on load.

    The file imports only torch and transformers, so the checkpoint needs nothing of this package.
    """
    import transformers

    if getattr(transformers, base.__name__, None) is not base:
        raise DsoError(
            f"{base.__name__} is not a transformers model class, so its norms cannot be given an added bias; "
            "export a model loaded without remote code"
        )
    class_name = f"DsoExport{base.__name__}"
    return class_name, _MODELING_TEMPLATE.format(
        class_name=class_name, base=base.__name__, key=BIAS_MODULES_KEY, version=__version__
    )


_MODELING_TEMPLATE = '''"""{class_name}: {base} whose listed normalisation modules add a bias to their output.

Written by `dso export` (dso {version}). The checkpoint has a steering transform y + w(a*y + b) folded into
the normalisation modules of {base}: the multiplicative part is in their weights; the additive part of
the norms without a bias of their own (RMSNorm) is the `bias` parameter that this class adds to each
module named in `config.{key}`, applied by a forward hook. Needs only torch and transformers.
"""

import torch
from torch import nn
from transformers import {base}


def add_norm_bias(module, inputs, output):
    """Forward hook: the norm's output plus its added bias."""
    return output + module.bias.to(output.device, output.dtype)


class {class_name}({base}):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        modules = dict(self.named_modules())
        for name in getattr(config, "{key}", None) or []:
            if name not in modules:
                raise ValueError(f"config.{key} names {{name!r}}, which is not a module of this model")
            module = modules[name]
            weight = module.weight
            module.bias = nn.Parameter(torch.zeros(weight.shape[-1], dtype=weight.dtype, device=weight.device))
            module.register_forward_hook(add_norm_bias)
'''


def _forget_module_copy(token: str) -> None:
    """Remove the copy of the modeling file that loading the temporary directory left in transformers'
    module cache (a directory named after it, which no later load will use)."""
    from transformers.dynamic_module_utils import TRANSFORMERS_DYNAMIC_MODULE_NAME
    from transformers.utils import HF_MODULES_CACHE

    for path in (Path(HF_MODULES_CACHE) / TRANSFORMERS_DYNAMIC_MODULE_NAME).glob(f"*{token}*"):
        shutil.rmtree(path, ignore_errors=True)
