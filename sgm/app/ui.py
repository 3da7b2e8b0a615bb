"""The page of the web app (Gradio): layout, events and serving.

Three steps, each a button in one row with the status area under it: stage 1 (a gallery of the
16 orbit views and the orbit video), stage 2 (the refined views and video) and the 3D model (a
viewer and a ``.glb`` download). The handlers live in :mod:`.handlers`. All three steps share
one concurrency group of size 1, so jobs queue for the device one at a time.

What a client can fetch: the app passes gradio no ``allowed_paths``, so nothing under the output
root is served directly; gradio serves its own copies of the result files the handlers return
(and the uploads), in its cache, under names derived from a server secret. Those copies and the
uploads are deleted once older than ``--keep_hours``, and all of them when the server stops
(unless ``--keep_hours`` is 0).
"""
from __future__ import annotations

from functools import partial

from .handlers import ERROR_PREFIX, START_MESSAGE, Handlers, gr
from .validation import ELEVATION_RANGE, GUIDANCE_RANGE, STEPS_RANGE

__all__ = ["ERROR_PREFIX", "Handlers", "build_page", "serve"]
DEVICE_QUEUE = "device"  # concurrency id shared by every event that runs a model
GLB_MIN_WIDTH = 300  # pixels: the download's name, size and padding fit in one row
CSS = """
#notice { background: #fff4d6; border: 1px solid #e6b800; border-radius: 6px; padding: 4px 12px; }
#status { min-height: 3em; border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 2px 12px; }
"""
INTRO = ("Upload a picture of one object (RGBA with a transparent background is best; RGB works too). "
         "**1** turns it into a 16-view orbit, **2** refines the orbit, **3** fuses the views into a 3D model.")
# Gradio refuses an upload of the wrong type or over the size limit in the browser, with a toast that
# fades and no event on the server. This copies each error toast's text into a hidden textbox, whose
# change event puts it in the status area (Handlers.client_refusal), where it stays.
KEEP_ERROR_TOASTS_JS = """
() => {
  const seen = new WeakSet();
  let count = 0;
  new MutationObserver(() => {
    const box = document.querySelector('#client_error textarea');
    if (!box) return;
    document.querySelectorAll('.toast-message-text.error').forEach((node) => {
      if (seen.has(node)) return;
      seen.add(node);
      count += 1;
      box.value = count + '|' + node.innerText;
      box.dispatchEvent(new Event('input', {bubbles: true}));
    });
  }).observe(document.body, {childList: true, subtree: true});
}
"""
CACHE_SWEEPS_PER_AGE = 4  # the gradio cache is swept this many times per --keep_hours (at least once an hour)


def build_page(handlers: Handlers, notice: str, title: str = "Hi3D",
               delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The page: input and settings on the left; the step buttons, the status and the results on the right.

    ``delete_cache``: gradio's (every seconds, older than seconds) sweep of its uploads and copies.
    """
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=delete_cache) as page:
        gr.Markdown(f"# {title}: image to 3D\n{INTRO}")
        gr.Markdown(notice, elem_id="notice")
        job = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                upload = gr.File(label="Input image", file_types=["image"], type="filepath", elem_id="input_file")
                preview = gr.Image(label="Input on white", type="pil", interactive=False, height=220,
                                   elem_id="input_preview")
                elevation = gr.Slider(*ELEVATION_RANGE, value=10, step=1, label="Elevation of the input view (degrees)",
                                      elem_id="elevation")
                # no minimum: gradio would refuse a bad seed in a passing toast; Settings.checked says it in the status
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                steps = gr.Slider(*STEPS_RANGE, value=25, step=1, label="Sampling steps", elem_id="steps")
                guidance1 = gr.Slider(*GUIDANCE_RANGE, value=2.5, step=0.1, label="Guidance, stage 1 (last frame)",
                                      elem_id="guidance1")
                guidance2 = gr.Slider(*GUIDANCE_RANGE, value=2.0, step=0.1, label="Guidance, stage 2 (last frame)",
                                      elem_id="guidance2")
            with gr.Column(scale=2):
                with gr.Row():
                    run1 = gr.Button("1. Generate orbit", variant="primary", elem_id="run_orbit")
                    run2 = gr.Button("2. Refine", elem_id="run_refine")
                    run3 = gr.Button("3. Make 3D model", elem_id="run_mesh")
                status = gr.Markdown(START_MESSAGE, elem_id="status")
                client_error = gr.Textbox(visible="hidden", elem_id="client_error")
                with gr.Row():
                    gallery1 = gr.Gallery(label="Stage 1: 16 orbit views", columns=4, height=620, scale=3,
                                          elem_id="orbit_gallery")
                    video1 = gr.Video(label="Orbit video", height=240, scale=1, elem_id="orbit_video")
                with gr.Row():
                    gallery2 = gr.Gallery(label="Stage 2: refined views", columns=4, height=620, scale=3,
                                          elem_id="refined_gallery")
                    video2 = gr.Video(label="Refined video", height=240, scale=1, elem_id="refined_video")
                with gr.Row():
                    model3d = gr.Model3D(label="3D model", clear_color=(1.0, 1.0, 1.0, 1.0), height=320, scale=3,
                                         elem_id="model3d")
                    # in a narrower column Gradio shrinks the file name away first ("mesh.glb" showed as ".g");
                    # where the row has no room for GLB_MIN_WIDTH it wraps the file below the viewer
                    glb = gr.File(label="Download mesh.glb", interactive=False, scale=1, min_width=GLB_MIN_WIDTH,
                                  elem_id="glb_file")

        def on_orbit(path, elevation_value, seed_value, steps_value, guidance_value, progress=gr.Progress()):
            return handlers.orbit(path, elevation_value, seed_value, steps_value, guidance_value, progress)

        def on_refine(job_value, path, seed_value, steps_value, guidance_value, progress=gr.Progress()):
            return handlers.refine(job_value, path, seed_value, steps_value, guidance_value, progress)

        def on_mesh(job_value, path, progress=gr.Progress()):
            return handlers.mesh(job_value, path, progress)

        queued = dict(concurrency_limit=1, concurrency_id=DEVICE_QUEUE)
        results = [gallery1, video1, gallery2, video2, model3d, glb]
        upload.change(handlers.upload, inputs=upload, outputs=[preview, *results, job, status])
        client_error.change(handlers.client_refusal, inputs=client_error, outputs=status, queue=False)
        for step, button, run, inputs, outputs, where in (
                (1, run1, on_orbit, [upload, elevation, seed, steps, guidance1], [*results, job, status], gallery1),
                (2, run2, on_refine, [job, upload, seed, steps, guidance2], [*results[2:], job, status], gallery2),
                (3, run3, on_mesh, [job, upload], [model3d, glb, job, status], model3d)):
            button.click(partial(handlers.starting, step), inputs=[upload, job], outputs=status, queue=False).then(
                run, inputs=inputs, outputs=outputs, show_progress_on=[where], **queued)
    return page


def theme() -> gr.themes.Base:
    """The default theme with local fonts only (the page must not fetch web fonts: it may run offline)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def cache_sweep(keep_hours: float) -> tuple[int, int] | None:
    """Gradio's ``delete_cache`` for uploads and result copies older than ``keep_hours`` (0: never swept)."""
    if not keep_hours:
        return None
    age = max(1, int(keep_hours * 3600))
    return max(1, min(3600, age // CACHE_SWEEPS_PER_AGE)), age


def serve(handlers: Handlers, notice: str, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
          max_upload_bytes: int = 20 * 2**20, queue_size: int = 16, keep_hours: float = 24.0,
          block: bool = True) -> gr.Blocks:
    """Build the page and serve it (jobs queue, ``queue_size`` waiting at most): until interrupted, or,
    with ``block=False``, in the background (the caller closes the returned page; tests)."""
    page = build_page(handlers, notice, delete_cache=cache_sweep(keep_hours))
    page.queue(default_concurrency_limit=1, max_size=queue_size)
    page.launch(server_name=host, server_port=port, share=share, max_file_size=max_upload_bytes, show_error=False,
                ssr_mode=False, mcp_server=False, enable_monitoring=False, footer_links=[], theme=theme(), css=CSS,
                js=KEEP_ERROR_TOASTS_JS, quiet=not block, prevent_thread_lock=not block)
    return page
