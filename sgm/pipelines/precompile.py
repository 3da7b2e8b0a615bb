"""The child process of a background compilation (:class:`~sgm.pipelines.compilation.BackgroundCompile`).

    python -m sgm.pipelines.precompile CALL_FILE

``CALL_FILE`` (written by the parent, ``torch.save``): the network's config node and device, each
parameter's dtype and ``requires_grad``, each buffer's dtype, the modules in training mode, the call's
inputs (on the CPU) and the state the call ran in. The network is
built with uninitialised weights (compilation depends on shapes and dtypes, not values), compiled
exactly as the parent will compile it, and called once, which leaves the compiled graphs and kernels
in torch's on-disk caches for the parent. Exit code 0 when that worked.
"""
from __future__ import annotations

import sys

import torch

from ..util import instantiate_from_config
from .call_state import entered, map_tensors, set_precision
from .compilation import COMPILE_OPTIONS


def build_network(call: dict) -> torch.nn.Module:
    """The parent's network with uninitialised weights: each parameter and buffer in the parent's
    dtype, each parameter with its ``requires_grad``, each module in its training mode (compiled
    graphs are keyed on all three: a partly frozen UNet compiled as all-frozen misses the cache)."""
    with torch.device("meta"):
        network = instantiate_from_config(call["network_config"])
    for name, (dtype, requires_grad) in call["parameters"].items():  # on the meta device: no memory
        parameter = network.get_parameter(name)
        parameter.data = parameter.data.to(getattr(torch, dtype))
        parameter.requires_grad_(requires_grad)
    for name, dtype in call["buffers"].items():
        owner, _, leaf = name.rpartition(".")
        module = network.get_submodule(owner)
        module._buffers[leaf] = module._buffers[leaf].to(getattr(torch, dtype))
    training = set(call["training"])
    for name, module in network.named_modules():
        module.training = name in training
    return network.to_empty(device=torch.device(call["device"]))


def precompile(call: dict) -> None:
    """Build, compile and call the network of ``call`` once (see the module docstring)."""
    device = torch.device(call["device"])
    state = call["state"]
    set_precision(state)
    network = build_network(call)
    network.compile(**COMPILE_OPTIONS)
    args, kwargs = (map_tensors(call[key], lambda tensor: tensor.to(device)) for key in ("args", "kwargs"))
    with entered(state):
        network(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m sgm.pipelines.precompile CALL_FILE")
    precompile(torch.load(argv[0], weights_only=True))


if __name__ == "__main__":
    main()
