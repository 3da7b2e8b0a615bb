"""Hi3D: high-resolution image-to-3D generation with video diffusion models (clean reimplementation).

The package mirrors the layout of Stability-AI's generative-models so the official Hi3D
YAML configs resolve: ``sgm.modules`` holds the networks and diffusion math,
``sgm.models`` the autoencoder and the Lightning diffusion engine.

Names
-----
Hi3D runs two diffusion stages and a 3D step. Our own code, docs and variables call the
stages **stage 1** and **stage 2** (``stage1``, ``stage2``); the other names below are kept
only where the official files, folders, class paths or state-dict keys need them.

Stage 1: the 512 px orbit generator (image -> 16 views around the object).
    Official names kept: the checkpoint ``first_stage.pt``, the script
    ``pipeline_i2v_eval_v01.py``, the output folder ``first_step/`` (``first.mp4``), the
    configs ``*-v01.yaml`` and the official class path ``vtdm.vtdm_gen_v01.VideoLDM``
    (ours: :class:`sgm.models.hi3d.Stage1VideoLDM`). In the pipeline API its step is
    called ``"orbit"`` (``stages=("orbit", ...)``, ``run_orbit``).
Stage 2: the 1024 px refiner (stage-1 views -> sharper views of the same orbit).
    Official names kept: ``second_stage.pt``, ``pipeline_i2v_eval_v02.py``, the folder
    ``second_step_video/`` (``second.mp4``), the configs ``*-v02.yaml`` and the class path
    ``vtdm.vtdm_gen_stage2_degradeImage.VideoLDM`` (ours: :class:`sgm.models.hi3d.Stage2VideoLDM`).
    Its pipeline step is ``"refine"`` (``run_refine``).
3D step: Gaussian fit and mesh from the stage-2 views (:mod:`sgm.recon`), pipeline step ``"mesh"``.

``first_stage`` is not stage 1: in the models, ``first_stage_model``, ``first_stage_config``,
``encode_first_stage`` / ``decode_first_stage`` and the options ``disable_first_stage_autocast``
and ``compile_first_stage_encoder`` name the VAE (the latent autoencoder, generative-models'
"first stage"), kept for the official configs and state-dict keys (``first_stage_model.*``);
whereas ``first_stage.pt`` is the stage-1 UNet checkpoint.

Camera angles of the views (rings, azimuth order, each frame's camera) are defined once in
:mod:`sgm.common.orbit`.
"""
__version__ = "0.1.0"
