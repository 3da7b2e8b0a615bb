"""3D side of the project: cameras, and later Gaussian fitting, rasterisation, meshes and metrics.

The camera convention shared by every module (renderer, orbit data loader, reconstruction)
is written down once, in :mod:`sgm.recon.cameras`: world right-handed with +z up, object at
the origin, elevation/azimuth in degrees (azimuth counter-clockwise seen from above, frame 0
at azimuth 0), OpenCV camera axes (x right, y down, z forward).
"""
