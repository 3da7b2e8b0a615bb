"""The bottom layer: what every other package may use and which imports nothing above it.

User-facing errors (:mod:`.errors`), image and video files and pixel conversions
(:mod:`.images`, :mod:`.video_io`), device resolution (:mod:`.devices`), the progress
callback type (:mod:`.progress`) and the orbit convention: rings, azimuth order and each
generated frame's camera angles (:mod:`.orbit`). It imports nothing else of this package.
"""
