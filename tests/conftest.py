"""Shared test fixtures: where the official reference tensors live."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """Folder of the parity cases: ``$HI3D_REFERENCE_DIR`` or ``<repo>/../shared/reference/public``."""
    return Path(os.environ.get("HI3D_REFERENCE_DIR", ROOT.parent / "shared" / "reference" / "public"))


def manifest_path() -> Path:
    """``state_dict_manifest.json`` beside the case folder."""
    return reference_dir().parent / "state_dict_manifest.json"


@pytest.fixture(scope="session")
def manifest() -> dict:
    path = manifest_path()
    if not path.is_file():
        pytest.fail(f"state-dict manifest not found at {path} (set HI3D_REFERENCE_DIR)")
    return json.loads(path.read_text())
