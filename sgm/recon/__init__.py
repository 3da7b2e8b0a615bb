"""From views to 3D: the camera convention, Gaussian-splatting fit, novel views, mesh, metrics.

The camera convention shared by every module (renderer, orbit data loader, reconstruction)
is written down once, in :mod:`sgm.recon.cameras`: world right-handed with +z up, object at
the origin, elevation/azimuth in degrees (azimuth counter-clockwise seen from above, frame 0
at azimuth 0), OpenCV camera axes (x right, y down, z forward).
:func:`sgm.recon.reconstruct.reconstruct` runs views -> Gaussians -> novel views -> textured
mesh; :mod:`sgm.recon.metrics` holds the paper's 3D measures.
"""
