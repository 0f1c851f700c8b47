"""NoRA Lab's library: LoRA and NoRA adapters, toy and language-model tasks, a paired
trainer, singular-value spectra, rank sweeps and a command line.

    import nora_core
    config = nora_core.AdapterConfig(method="nora", r=4)
    model = nora_core.inject_adapters(model, config)
    optimizer = torch.optim.AdamW(nora_core.adapter_parameters(model), lr=1e-3)
"""

from nora_core.adapters import (AdapterLayer, MergeError, adapter_layers, adapter_parameters,
                                adaptable_module_names, count_trainable, inject_adapters,
                                merge_adapters, unmerge_adapters)
from nora_core.config import AdapterConfig

__all__ = [
    "AdapterConfig",
    "AdapterLayer",
    "MergeError",
    "adaptable_module_names",
    "adapter_layers",
    "adapter_parameters",
    "count_trainable",
    "inject_adapters",
    "merge_adapters",
    "unmerge_adapters",
]
