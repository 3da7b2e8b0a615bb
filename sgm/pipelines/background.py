"""Background removal of RGB inputs with the optional ``rembg`` package (``pip install -e .[rembg]``).

Nothing rembg does can end the process. rembg is imported on first use only; a bare ``rembg``
install (without its ``[cpu]`` or ``[gpu]`` extra, which bring onnxruntime) calls ``sys.exit(1)``
while being imported, and that, like any other failure to import it, becomes one warning for the
process and the images are used as they are. A failure while it runs (its model file cannot be
downloaded, say) becomes one warning for that image, which is used as it is.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from types import ModuleType

from PIL import Image

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install -e .[rembg], which installs rembg[cpu]"


def rembg_available() -> bool:
    """Whether a ``rembg`` package is installed (it may still fail to import: :func:`load_rembg`)."""
    return importlib.util.find_spec("rembg") is not None


@functools.lru_cache(maxsize=1)
def load_rembg() -> ModuleType | None:
    """The ``rembg`` module, or None (with one warning) when it is absent or fails to import.

    The result is kept for the process (``load_rembg.cache_clear()`` tries again).
    """
    if not rembg_available():
        log.warning("RGB input and rembg is not installed: using the image as is (%s, or pass an RGBA image "
                    "with the object cut out)", INSTALL_HINT)
        return None
    try:
        return importlib.import_module("rembg")
    except (Exception, SystemExit) as err:  # a bare rembg exits while imported when onnxruntime is missing
        reason = f"it exited with code {err.code}" if isinstance(err, SystemExit) else f"{type(err).__name__}: {err}"
        log.warning("rembg is installed but cannot be imported (%s; onnxruntime missing? %s): RGB inputs are "
                    "used as they are", reason, INSTALL_HINT)
        return None


def remove_background(image: Image.Image, use_rembg: bool = True) -> Image.Image:
    """RGBA version of ``image``.

    RGBA input is returned as is. RGB input goes through rembg when ``use_rembg`` is true and rembg
    can be imported; otherwise, or if rembg fails on it, it is used as is (fully opaque), with a
    warning unless ``use_rembg`` is false.
    """
    if image.mode == "RGBA":
        return image
    rembg = load_rembg() if use_rembg else None
    if rembg is not None:
        try:
            return rembg.remove(image).convert("RGBA")
        except (Exception, SystemExit) as err:  # rembg downloads its model on first use; offline that fails
            log.warning("rembg could not remove the background (%s: %s); using the image as is",
                        type(err).__name__, err)
    return image.convert("RGBA")
