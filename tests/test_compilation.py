"""Background compilation (sgm/pipelines/compilation.py): a child process compiles, the caller stays eager
until it adopts the compiled module from torch's on-disk cache."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from sgm.pipelines import compilation
from sgm.pipelines.compilation import BackgroundCompile
from sgm.pipelines.loading import PROJECT_ROOT
from sgm.util import instantiate_from_config

CONV = {"target": "torch.nn.Conv2d", "params": {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "padding": 1}}
CHILD_SECONDS = 240  # a cold inductor start on 2 busy cores


@pytest.fixture
def fresh_compile_cache(tmp_path, monkeypatch):
    """An empty inductor cache shared by this process and its children; dynamo's in-memory state reset."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_the_child_compiles_and_the_caller_loads_its_graph_from_the_cache(fresh_compile_cache):
    torch.manual_seed(0)
    module = instantiate_from_config(CONV).eval()
    x = torch.randn(2, 4, 12, 12)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(x, module.weight, module.bias, padding=1)
    compiling = BackgroundCompile(module, "tiny", CONV)
    assert not compiling.started and not compiling.adopt()

    with torch.no_grad():
        first = module(x)  # eager, and it starts the child
    assert compiling.started and module._compiled_call_impl is None
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    assert compiling.wait(CHILD_SECONDS), "the child did not finish"
    assert compiling.child.returncode == 0, (compiling.folder / "log.txt").read_text()[-2000:]

    assert compiling.adopt() and compiling.adopt()
    assert module._compiled_call_impl is not None  # what module.compile() sets
    with torch.no_grad():
        compiled = module(x)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)
    # the caller compiled nothing itself: its graph came from the child's entry in the cache
    assert counters["inductor"]["fxgraph_cache_hit"] == 1
    assert counters["inductor"]["fxgraph_cache_miss"] == 0


def test_the_child_builds_the_network_with_the_parents_dtypes_grad_flags_and_modes():
    """A compiled graph is keyed on each parameter's requires_grad (seen on an H200: the partly frozen
    stage-2 UNet rebuilt all-frozen missed the cache, and the switch-over call compiled for 93 s)."""
    from sgm.pipelines.precompile import build_network

    block = {"target": "sgm.modules.diffusionmodules.model.ResnetBlock", "params": {"in_channels": 32, "out_channels": 64}}
    module = instantiate_from_config(block).eval()
    module.norm1.requires_grad_(False)  # the first parameter frozen, the others trained
    module.half()
    module.dropout.train()
    compiling = BackgroundCompile(module, "tiny", block)
    module(torch.randn(1, 32, 4, 4, dtype=torch.float16))  # eager: writes the call and starts the child
    compiling.child.kill()
    compiling.child.wait()
    call = torch.load(compiling.folder / "call.pt", weights_only=True)
    network = build_network(call)

    def described(net):
        return ({name: (p.dtype, p.requires_grad) for name, p in net.named_parameters()},
                {name: b.dtype for name, b in net.named_buffers()},
                {name for name, m in net.named_modules() if m.training})
    assert described(network) == described(module)
    assert described(module)[0]["conv2.weight"] == (torch.float16, True)
    assert described(module)[0]["norm1.weight"] == (torch.float16, False)


def test_a_failed_child_leaves_the_module_eager_with_one_warning(fresh_compile_cache, caplog):
    module = instantiate_from_config(CONV).eval()
    compiling = BackgroundCompile(module, "tiny", {"target": "torch.nn.NoSuchLayer"})
    with torch.no_grad():
        module(torch.randn(1, 4, 8, 8))
    assert compiling.wait(CHILD_SECONDS) and compiling.child.returncode != 0
    with caplog.at_level(logging.WARNING, logger="sgm.pipelines.compilation"):
        assert not compiling.adopt()
        assert not compiling.adopt()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "stays eager" in warnings[0] and "log.txt" in warnings[0]
    assert "NoSuchLayer" in (compiling.folder / "log.txt").read_text()
    assert sorted(p.name for p in compiling.folder.iterdir()) == ["log.txt"]  # the inputs are gone
    assert module._compiled_call_impl is None
    shutil.rmtree(compiling.folder)


def test_children_still_running_are_ended_with_the_process(tmp_path):
    folder = tmp_path / "precompile"
    folder.mkdir()
    (folder / "call.pt").write_bytes(b"inputs")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    compilation._children[child] = folder
    try:
        compilation._end_children()
        assert child.poll() is not None and not folder.exists() and child not in compilation._children
    finally:
        compilation._children.pop(child, None)
        if child.poll() is None:
            child.kill()


EXITS_DURING_COMPILATION = """
import torch
from sgm.pipelines.compilation import BackgroundCompile
from sgm.util import instantiate_from_config
node = {node!r}
module = instantiate_from_config(node)
compiling = BackgroundCompile(module, "tiny", node)
with torch.no_grad():
    module(torch.randn(1, 4, 8, 8))
print(compiling.child.pid, compiling.folder, flush=True)
"""


def test_a_process_that_exits_while_its_child_compiles_ends_it_cleanly(fresh_compile_cache, tmp_path):
    script = tmp_path / "exits.py"
    script.write_text(EXITS_DURING_COMPILATION.format(node=CONV))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    pid, folder = done.stdout.split()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    assert not Path(folder).exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_pipeline_runs_eagerly_then_switches_to_the_compiled_unet_between_images_on_the_gpu():
    from sgm.pipelines.hi3d import DEMO_CONFIGS, Hi3DPipeline

    image = PROJECT_ROOT / "demo" / "object_a_elev10.png"
    pipe = Hi3DPipeline.from_configs(*DEMO_CONFIGS, device="cuda", use_rembg=False, compile="auto")
    unet = pipe.model("orbit").model.diffusion_model
    unet.input_blocks.requires_grad_(True)  # mixed flags (a partly trained UNet): the child must rebuild each one
    eager = pipe(image, None, elevation_deg=10, stages=("orbit",), output_type="np").orbit.frames
    (compiling,) = pipe._compiling["orbit"]
    assert compiling.started and not compiling.adopted
    assert compiling.wait(600) and compiling.child.returncode == 0
    torch._dynamo.reset()
    counters.clear()
    compiled = pipe(image, None, elevation_deg=10, stages=("orbit",), output_type="np").orbit.frames
    assert compiling.adopted
    # the parent compiled nothing itself (on an H200 a missed key cost the switch-over call 93 s instead of 15 s)
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1 and counters["inductor"]["fxgraph_cache_miss"] == 0
    difference = abs(compiled - eager)  # pixels / 255
    assert difference.max() <= 0.03 and difference.mean() <= 0.002  # fp16 reassociation and the uint8 rounding


def test_a_worker_thread_enters_the_callers_grad_mode_and_autocast():
    import threading

    from sgm.pipelines.call_state import call_state, entered

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = call_state("cpu")
    seen = {}

    def worker():
        seen["bare"] = (torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"))
        with entered(state):
            seen["entered"] = (torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["bare"] == (True, False)  # a new thread starts from the defaults
    assert seen["entered"] == (False, True, torch.bfloat16)
