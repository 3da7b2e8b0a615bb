"""The Hi3D web app (``python app.py``): a Gradio page over :class:`~sgm.pipelines.hi3d.Hi3DPipeline`.

Modules:
    validation  uploads and settings checked before any work (no Gradio needed)
    jobs        one job folder per run, one job at a time on the device, error messages for the page
    models      which models the app serves (released checkpoints or the demo configs)
    ui          the page layout and its event handlers (imports Gradio)
"""
