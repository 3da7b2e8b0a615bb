"""Mesh simplification to a face budget (quadric edge collapse, ``fast-simplification``)."""
from __future__ import annotations

import numpy as np

from sgm.recon.export import Mesh

MIN_FACES = 4  # no closed surface has fewer


def simplify_to_faces(mesh: Mesh, max_faces: int | None) -> Mesh:
    """``mesh`` with at most about ``max_faces`` faces (its vertex colours, UVs and texture are dropped:
    colour it afterwards). A mesh already within the budget, or ``max_faces`` None, is returned as is.

    Quadric error edge collapses keep the shape where it curves and remove faces where it is flat;
    the face count lands within a few faces of the budget.

    Raises:
        ValueError: ``max_faces`` below 4 (no closed surface has fewer faces).
    """
    if max_faces is None or len(mesh.faces) <= max_faces:
        return mesh
    if max_faces < MIN_FACES:
        raise ValueError(f"the face budget must be at least {MIN_FACES}, got {max_faces}")
    import fast_simplification

    points, faces = fast_simplification.simplify(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int64),
                                                 target_reduction=1.0 - max_faces / len(mesh.faces))
    return Mesh(np.asarray(points, dtype=np.float64), np.asarray(faces, dtype=np.int64))
