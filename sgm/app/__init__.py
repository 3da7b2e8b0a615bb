"""The Hi3D web app (``python app.py``): a Gradio page over :class:`~sgm.pipelines.hi3d.Hi3DPipeline`.

Modules:
    validation  uploads and settings checked before any work (no Gradio needed)
    storage     the output root: job folders only, which old ones are deleted
    readiness   whether a job's refined views can make a 3D model, said in the user's terms
    jobs        one job folder per run, one job at a time on the device, error messages for the page
    models      which models the app serves (released checkpoints or the demo configs)
    handlers    the functions behind the page's events (imports Gradio)
    ui          the page layout, its events and serving (imports Gradio)
"""
