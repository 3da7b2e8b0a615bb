"""From views to 3D: the project's camera convention, Gaussian-splatting fit, novel views, mesh, metrics.

``cameras`` is the one camera convention of the project (used by the renderer, the data
loader and reconstruction); ``reconstruct.reconstruct`` runs views -> Gaussians -> novel views
-> textured mesh; ``metrics`` holds the paper's 3D measures.
"""
