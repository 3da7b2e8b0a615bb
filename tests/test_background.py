"""Background removal with rembg cannot end the process: fake ``rembg`` packages (a bare install that
exits while imported, one that raises, one that works) are put on ``sys.path`` in place of the real one."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from sgm.pipelines.background import load_rembg, remove_background

RGB = Image.new("RGB", (80, 80), (250, 250, 250))
RGB.paste((200, 30, 30), (20, 20, 60, 60))


def fake_rembg(root: Path, body: str, monkeypatch) -> None:
    """Make ``import rembg`` load a package whose ``__init__.py`` is ``body``."""
    package = root / "rembg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "rembg", raising=False)
    load_rembg.cache_clear()


@pytest.fixture(autouse=True)
def fresh_import_state():
    load_rembg.cache_clear()
    yield
    load_rembg.cache_clear()
    sys.modules.pop("rembg", None)


def test_a_rembg_that_exits_on_import_becomes_one_warning(tmp_path, monkeypatch, caplog):
    # what a bare `pip install rembg` does without onnxruntime
    fake_rembg(tmp_path, "import sys\nprint('No onnxruntime backend found.')\nsys.exit(1)\n", monkeypatch)
    with caplog.at_level(logging.WARNING):
        first = remove_background(RGB, use_rembg=True)
        second = remove_background(RGB, use_rembg=True)
    assert first.mode == "RGBA" and np.all(np.asarray(first)[..., 3] == 255)
    np.testing.assert_array_equal(np.asarray(first)[..., :3], np.asarray(RGB))
    assert np.array_equal(np.asarray(second), np.asarray(first))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "exited with code 1" in warnings[0] and "rembg[cpu]" in warnings[0]


def test_a_rembg_that_fails_while_running_leaves_the_image_as_is(tmp_path, monkeypatch, caplog):
    fake_rembg(tmp_path, """
        def remove(image):
            raise OSError("cannot download u2net.onnx: no network")
    """, monkeypatch)
    with caplog.at_level(logging.WARNING):
        rgba = remove_background(RGB, use_rembg=True)
    assert np.all(np.asarray(rgba)[..., 3] == 255)
    assert any("u2net.onnx" in r.getMessage() for r in caplog.records)


def test_a_working_rembg_cuts_the_object_out(tmp_path, monkeypatch):
    fake_rembg(tmp_path, """
        import numpy as np
        from PIL import Image

        def remove(image):
            pixels = np.asarray(image.convert("RGB"))
            alpha = np.where(pixels.min(axis=-1) < 240, 255, 0).astype(np.uint8)
            return Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    """, monkeypatch)
    alpha = np.asarray(remove_background(RGB, use_rembg=True))[..., 3]
    assert alpha[40, 40] == 255 and alpha[5, 5] == 0
    assert np.all(np.asarray(remove_background(RGB, use_rembg=False))[..., 3] == 255)  # --no_rembg: not called


def test_the_cli_survives_a_rembg_that_exits_on_import(tmp_path):
    """In a real process: the input of an RGB image is read, with the exiting rembg first on the path."""
    (tmp_path / "fake" / "rembg").mkdir(parents=True)
    (tmp_path / "fake" / "rembg" / "__init__.py").write_text("import sys\nsys.exit(1)\n")
    image = tmp_path / "photo.png"
    RGB.resize((64, 64)).save(image)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sgm.pipelines.inputs import load_input; "
            "print(load_input(sys.argv[2], use_rembg=True).rgba.mode)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fake"), str(image)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "RGBA" and "cannot be imported" in done.stderr
