"""Units of the 3D stage: view loading and its errors, rasteriser, densification, meshing, export, metrics."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ray_sphere_views
from PIL import Image

from sgm.common.video_io import write_mp4
from sgm.recon.cameras import orbit_cameras
from sgm.recon.export import Mesh, read_mesh, write_glb, write_obj
from sgm.recon.fit import FitConfig, _optimizer, densify_and_prune, fit_gaussians
from sgm.recon.gaussians import GaussianScene, hull_surface, init_from_views, visual_hull
from sgm.recon.isosurface import marching_tetrahedra
from sgm.recon.mesh import (
    component_labels,
    fuse_depths,
    mesh_from_sdf,
    reject_depth_outliers,
    remove_small_components,
)
from sgm.recon.metrics import mesh_metrics, normalize_mesh, psnr, ssim, volume_iou, voxelize
from sgm.recon.novel_views import novel_view_angles
from sgm.recon.rasterize import gsplat_available, render, resolve_backend, view_camera
from sgm.recon.reconstruct import ReconstructConfig, reconstruct, reconstruct_steps
from sgm.recon.views import ViewError, load_views, resize_views, validate_views

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def _sphere_sdf(radius: float, center=(0.0, 0.0, 0.0)):
    return lambda p: np.linalg.norm(p - np.asarray(center), axis=-1) - radius


def _disc_views(count: int = 16, size: int = SIZE, radius: int = 6) -> np.ndarray:
    """uint8 RGB (count, size, size, 3): a dark disc in the middle of a white image."""
    rows, cols = np.mgrid[:size, :size]
    disc = (rows - size / 2 + 0.5) ** 2 + (cols - size / 2 + 0.5) ** 2 < radius ** 2
    image = np.full((size, size, 3), 255, np.uint8)
    image[disc] = (200, 40, 40)
    return np.repeat(image[None], count, axis=0)


def _write_views(folder: Path, pixels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, view in enumerate(pixels):
        Image.fromarray(view).save(folder / f"view_{k:02d}.png")
    return folder


def _gaussians(means, log_scale=-3.0, opacity_logit=2.0, colors=None) -> GaussianScene:
    means = torch.as_tensor(means, dtype=torch.float32).reshape(-1, 3)
    n = len(means)
    colors = torch.zeros(n, 3) if colors is None else torch.as_tensor(colors, dtype=torch.float32)
    return GaussianScene(means, torch.full((n, 3), log_scale), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                         torch.full((n,), opacity_logit), colors)


# ----------------------------------------------------------------------------- views


def test_views_folder_loads_with_ring_cameras_and_white_threshold_masks(tmp_path):
    views = load_views(_write_views(tmp_path / "views", _disc_views()), elevation_deg=10.0)
    assert views.images.shape == (16, SIZE, SIZE, 3) and views.masks.shape == (16, SIZE, SIZE)
    assert np.allclose(views.cameras.azimuths_deg, np.arange(16) * 22.5)
    assert np.allclose(views.cameras.elevations_deg, 10.0)
    assert views.masks[0, SIZE // 2, SIZE // 2] == 1.0 and views.masks[0, 0, 0] == 0.0


def test_mask_files_beside_the_views_are_used(tmp_path):
    _write_views(tmp_path / "views", _disc_views())
    (tmp_path / "masks").mkdir()
    for k in range(16):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[4:10, 4:10] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"mask_{k:02d}.png")
    views = load_views(tmp_path / "views", 0.0)
    assert views.masks[0, 5, 5] == 1.0 and views.masks[0, SIZE // 2, SIZE // 2] == 0.0


def test_pipeline_output_folder_and_video_are_accepted(tmp_path):
    _write_views(tmp_path / "out" / "second_step_video" / "views", _disc_views())
    assert len(load_views(tmp_path / "out", 0.0)) == 16
    video = write_mp4(_disc_views(), tmp_path / "orbit.mp4")
    views = load_views(video, 20.0)
    assert len(views) == 16 and views.masks[3, SIZE // 2, SIZE // 2] == 1.0 and views.masks[3, 0, 0] == 0.0


def test_fewer_than_16_views_is_a_clear_error(tmp_path):
    folder = _write_views(tmp_path / "views", _disc_views(12))
    with pytest.raises(ViewError, match="found 12 views.*at least 16"):
        load_views(folder, 0.0)


def test_mismatched_view_sizes_are_a_clear_error(tmp_path):
    folder = _write_views(tmp_path / "views", _disc_views())
    Image.fromarray(_disc_views(1, size=40)[0]).save(folder / "view_07.png")
    with pytest.raises(ViewError, match=r"view_07.png is 40x40 px but view_00.png is 32x32"):
        load_views(folder, 0.0)


def test_empty_mask_is_a_clear_error(tmp_path):
    pixels = _disc_views()
    pixels[5] = 255
    with pytest.raises(ViewError, match="mask of view_05.png is empty"):
        load_views(_write_views(tmp_path / "views", pixels), 0.0)


def test_full_mask_and_missing_input_are_clear_errors(tmp_path):
    pixels = _disc_views()
    pixels[2] = 30
    with pytest.raises(ViewError, match="view_02.png covers the whole image"):
        load_views(_write_views(tmp_path / "views", pixels), 0.0)
    with pytest.raises(ViewError, match="views not found"):
        load_views(tmp_path / "nothing", 0.0)


def test_validate_views_checks_mask_shape_and_resize_keeps_the_field_of_view():
    images = np.ones((16, SIZE, SIZE, 3), np.float32)
    cameras = orbit_cameras(0.0, 16, width=SIZE, height=SIZE)
    with pytest.raises(ViewError, match="masks have shape"):
        validate_views(images, np.ones((16, SIZE, SIZE + 1)), cameras, tuple(map(str, range(16))))
    masks = np.zeros((16, SIZE, SIZE), np.float32)
    masks[:, 8:24, 8:24] = 1
    small = resize_views(validate_views(images, masks, cameras, tuple(map(str, range(16)))), 16)
    assert small.images.shape == (16, 16, 16, 3) and small.cameras.width == 16
    assert math.isclose(small.cameras.K[0, 0, 0], cameras.K[0, 0, 0] / 2)


# ----------------------------------------------------------------------------- Gaussians and rasteriser


def test_single_gaussian_matches_its_closed_form():
    cameras = orbit_cameras(0.0, 1, width=64, height=64)
    out = render(_gaussians([0, 0, 0], log_scale=-3.0, opacity_logit=2.0), view_camera(cameras, 0), backend="torch")
    focal = cameras.K[0, 0, 0]
    variance = (math.exp(-3.0) * focal / cameras.distance) ** 2 + 0.3  # square pixels, blur included
    opacity = 1 / (1 + math.exp(-2.0))
    peak = opacity * math.exp(-0.5 * 0.5 / variance)  # pixel centres sit half a pixel off the image centre
    assert math.isclose(float(out.alpha.max()), peak, rel_tol=1e-4)
    assert math.isclose(float(out.alpha.sum()), 2 * math.pi * variance * opacity, rel_tol=0.02)
    assert math.isclose(float(out.median_depth[32, 32]), cameras.distance, rel_tol=1e-5)


def test_nearer_gaussian_hides_the_farther_one():
    cameras = orbit_cameras(0.0, 2, width=32, height=32)  # azimuth 0 looks along -x, azimuth 180 along +x
    red_blue = [[9, -9, -9], [-9, -9, 9]]
    scene = _gaussians([[0.2, 0, 0], [-0.2, 0, 0]], log_scale=-2.0, opacity_logit=6.0, colors=red_blue)
    front = render(scene, view_camera(cameras, 0), backend="torch").color[16, 16]
    back = render(scene, view_camera(cameras, 1), backend="torch").color[16, 16]
    assert front[0] > 0.9 and front[2] < 0.1  # red Gaussian at +x is nearer the camera at +x
    assert back[2] > 0.9 and back[0] < 0.1


def test_rasteriser_gradient_matches_finite_differences():
    cameras = orbit_cameras(15.0, 1, width=24, height=24)
    generator = torch.Generator().manual_seed(1)
    means = torch.randn(6, 3, generator=generator) * 0.15
    colors = torch.randn(6, 3, generator=generator)
    target = torch.rand(24, 24, 3, generator=generator)

    def loss(m: torch.Tensor) -> torch.Tensor:
        scene = _gaussians(m, log_scale=-2.0, opacity_logit=0.0, colors=colors)
        return ((render(scene, view_camera(cameras, 0), backend="torch").color - target) ** 2).sum()

    m = means.clone().requires_grad_(True)
    loss(m).backward()
    eps = 1e-3
    for index in [(0, 0), (2, 1), (5, 2)]:
        plus, minus = means.clone(), means.clone()
        plus[index] += eps
        minus[index] -= eps
        numeric = (loss(plus) - loss(minus)).item() / (2 * eps)
        assert math.isclose(m.grad[index].item(), numeric, rel_tol=0.05, abs_tol=0.05)


def test_backend_selection():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="gsplat backend needs a CUDA device"):
        resolve_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown rasteriser backend"):
        resolve_backend("opengl", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and gsplat_available()), reason="needs CUDA and gsplat")
def test_gsplat_and_torch_backends_agree():
    generator = torch.Generator().manual_seed(0)
    n = 500
    scene = GaussianScene(torch.randn(n, 3, generator=generator) * 0.2, torch.full((n, 3), -3.5),
                          torch.randn(n, 4, generator=generator), torch.randn(n, generator=generator),
                          torch.randn(n, 3, generator=generator)).to("cuda")
    camera = view_camera(orbit_cameras(20.0, 16, width=64, height=64), 3, "cuda")
    ours, theirs = render(scene, camera, backend="torch"), render(scene, camera, backend="gsplat")
    assert (ours.color - theirs.color).abs().max() < 2e-2
    assert (ours.alpha - theirs.alpha).abs().max() < 2e-2


def test_visual_hull_of_a_centred_disc_is_a_rounded_solid():
    masks = np.zeros((16, SIZE, SIZE), np.float32)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    masks[:] = (rows - SIZE / 2 + 0.5) ** 2 + (cols - SIZE / 2 + 0.5) ** 2 < 8 ** 2
    cameras = orbit_cameras(0.0, 16, width=SIZE, height=SIZE)
    occupancy = visual_hull(masks, cameras, 32, 0.75)
    assert occupancy[16, 16, 16] and not occupancy[0, 0, 0] and not occupancy[16, 16, 31]
    assert hull_surface(occupancy).sum() < occupancy.sum()
    images = np.ones((16, SIZE, SIZE, 3), np.float32)
    scene = init_from_views(images, masks, cameras, 100, torch.Generator().manual_seed(0), 32)
    assert len(scene) == 100 and scene.means.norm(dim=1).max() < 0.6
    contradicting = masks.copy()
    contradicting[::2] = np.roll(masks[::2], 12, axis=2)  # every other silhouette moved aside
    contradicting[1::2] = 0
    with pytest.raises(ValueError, match="visual hull .* is empty"):
        init_from_views(images, contradicting, cameras, 100, torch.Generator().manual_seed(0), 32, max_misses=0)


def test_densify_clones_small_splits_large_prunes_transparent():
    scene = _gaussians([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0]], log_scale=math.log(0.005)).detached(True)
    with torch.no_grad():
        scene.log_scales[1] = math.log(0.05)  # large -> split
        scene.opacity_logits[3] = -10.0  # transparent -> pruned
    config = FitConfig(grad_threshold=1e-3, dense_fraction=0.01, max_scale_fraction=0.1)
    optimizer = _optimizer(scene, config)
    render(scene, view_camera(orbit_cameras(0.0, 1, width=16, height=16), 0)).color.sum().backward()
    optimizer.step()
    grads = torch.tensor([1.0, 1.0, 0.0, 0.0])  # Gaussians 0 and 1 moved a lot on screen
    new, new_opt = densify_and_prune(scene, optimizer, config, grads, 1.0, torch.Generator().manual_seed(0))
    # kept: 0, 2 (1 split, 3 pruned) + clone of 0 + two halves of 1
    assert len(new) == 5
    assert torch.allclose(new.scales()[3:], torch.full((2, 3), 0.05 / 1.6), rtol=0.02)  # one Adam step moved them
    state = new_opt.state[new.means]
    assert state["exp_avg"].shape == (5, 3) and torch.all(state["exp_avg"][2:] == 0)


def test_fit_is_seeded_and_reduces_the_loss(tmp_path):
    views = load_views(_write_views(tmp_path / "views", _disc_views()), 0.0)
    config = FitConfig(iterations=30, num_init=200, init_resolution=24, densify_from=10, densify_every=10, seed=3)
    first, second = fit_gaussians(views, config, progress=False), fit_gaussians(views, config, progress=False)
    assert np.mean(first.losses[-5:]) < 0.7 * np.mean(first.losses[:5])
    assert first.losses == second.losses and torch.equal(first.scene.means, second.scene.means)
    path = first.scene.save(tmp_path / "g.pt")
    assert torch.equal(GaussianScene.load(path).means, first.scene.means)


def test_novel_view_angles_avoid_the_input_cameras():
    elevations, azimuths = novel_view_angles(10.0, 7, num_input=16)
    assert len(elevations) == 7 and np.allclose(elevations[:4], 10.0)
    assert set(np.round(elevations[4:], 6)) == {30.0, -10.0}
    same_ring = azimuths[:4, None] - np.arange(16) * 22.5
    assert np.all(np.abs((same_ring + 180) % 360 - 180).min(axis=1) >= 11.0)  # halfway between input views
    with pytest.raises(ValueError):
        novel_view_angles(0.0, -1)


# ----------------------------------------------------------------------------- meshing


def test_marching_tetrahedra_gives_a_closed_outward_sphere():
    mesh = mesh_from_sdf(_sphere_sdf(0.4), resolution=48)
    edges = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]), axis=1)
    assert set(np.unique(np.unique(edges, axis=0, return_counts=True)[1])) == {2}  # closed, manifold
    assert math.isclose(mesh.volume(), 4 / 3 * math.pi * 0.4 ** 3, rel_tol=0.01)  # positive: faces point outward
    assert math.isclose(mesh.area(), 4 * math.pi * 0.4 ** 2, rel_tol=0.01)
    empty = marching_tetrahedra(np.ones((4, 4, 4)), np.zeros(3), 1.0)
    assert len(empty.faces) == 0


def test_small_fragments_are_removed():
    two = mesh_from_sdf(lambda p: np.minimum(_sphere_sdf(0.4)(p), _sphere_sdf(0.05, (0.6, 0.6, 0.6))(p)), 48)
    assert len(np.unique(component_labels(len(two.vertices), two.faces))) == 2
    one = remove_small_components(two, 0.05)
    assert len(np.unique(component_labels(len(one.vertices), one.faces))) == 1
    assert one.faces.max() < len(one.vertices) and one.vertices[:, 0].max() < 0.45


def test_fusing_exact_sphere_depths_recovers_the_sphere():
    cameras = orbit_cameras(20.0, 16, width=48, height=48)
    depths, hits, _ = ray_sphere_views(cameras, 0.3)
    depths[0, 20, 20] = 2.5  # a pinhole seeing far behind: rejected, no tunnel
    depths = reject_depth_outliers(np.where(hits, depths, np.nan), tolerance=0.07)
    assert np.isnan(depths[0, 20, 20])
    volume = fuse_depths(depths, hits, cameras, 48, 0.75)
    mesh = remove_small_components(marching_tetrahedra(volume.sdf, volume.origin, volume.spacing))
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() - 0.3) < 0.01 and radii.std() < 0.01


# ----------------------------------------------------------------------------- export and metrics


def test_obj_and_glb_round_trip_with_colours(tmp_path):
    import trimesh

    mesh = mesh_from_sdf(_sphere_sdf(0.3, (0.1, 0.0, 0.2)), 24)
    mesh = Mesh(mesh.vertices, mesh.faces, np.random.default_rng(0).random((len(mesh.vertices), 3)))
    for path, step in ((write_obj(mesh, tmp_path / "m.obj"), 1e-4), (write_glb(mesh, tmp_path / "m.glb"), 0.5 / 255)):
        back = read_mesh(path)
        assert np.allclose(back.vertices, mesh.vertices, atol=1e-5) and np.array_equal(back.faces, mesh.faces)
        assert np.allclose(back.colors, mesh.colors, atol=step + 1e-9)  # the GLB stores 8-bit colours
    # trimesh (as viewers) reads the GLB's colours, and world z (up) is the file's Y
    shape = trimesh.load(tmp_path / "m.glb", force="mesh", process=False)
    np.testing.assert_array_equal(shape.visual.vertex_colors[:, :3], np.round(mesh.colors * 255).astype(np.uint8))
    assert shape.bounds[1][1] == pytest.approx(0.5, abs=0.01)


def test_image_metrics():
    image = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert np.all(psnr(image, image) > 100)
    assert math.isclose(psnr(image, (image + 0.1).clamp(0, 1))[0], 20.0, abs_tol=1.0)
    x = image.permute(0, 3, 1, 2)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6) and ssim(x, 1 - x).max() < 0.5


def test_mesh_metrics_after_normalisation():
    sphere = mesh_from_sdf(_sphere_sdf(0.4), 32)
    moved = Mesh(sphere.vertices * 0.5 + 0.2, sphere.faces)
    same = mesh_metrics(sphere, moved, 5000, 32)
    assert same["volume_iou"] > 0.99 and same["chamfer"] < 0.02  # normalisation removes scale and offset
    assert mesh_metrics(sphere, moved, 5000, 32, normalize=False)["volume_iou"] < 0.2
    cube = mesh_from_sdf(lambda p: np.abs(p).max(axis=1) - 0.4, 32)
    ball_in_box = volume_iou(normalize_mesh(sphere), normalize_mesh(cube), 48)
    assert math.isclose(ball_in_box, math.pi / 6, abs_tol=0.03)  # unit ball volume / unit cube volume
    solid = voxelize(normalize_mesh(cube), 16)  # voxel centres at +-0.52 lie outside the unit cube
    assert solid[1:15, 1:15, 1:15].all() and not solid[0].any() and not solid[..., 15].any()


# ----------------------------------------------------------------------------- whole reconstruction


def test_reconstruct_reports_every_step_in_order_up_to_the_total(tmp_path):
    views = load_views(_write_views(tmp_path / "views", _disc_views()), 0.0)
    config = ReconstructConfig(fit=FitConfig(iterations=5, num_init=200, init_resolution=24, backend="torch"),
                               resolution=None, num_novel_views=3, mesh_resolution=24, texture_size=64)
    calls = []
    result = reconstruct(views, 0.0, tmp_path / "3d", config, device="cpu", progress=False,
                         callback=lambda step, total: calls.append((step, total, result_files(tmp_path / "3d"))))
    total = reconstruct_steps(config, 16)
    # fit steps, novel views, meshing (depths, fusion, surface, colours; UV atlas, texture), writing
    assert total == 5 + 3 + (16 + 2 * 19 + 1 + 1 + 19) + 1
    assert [step for step, _, _ in calls] == list(range(total)) and {t for _, t, _ in calls} == {total}
    # the phases in order: fit and novel views, then (views written) the meshing, then the files at the last step
    files = [names for _, _, names in calls]
    assert files[5 + 3 - 1] == set() and files[5 + 3] == files[-2] == {"views", "masks"}
    assert {"mesh.glb", "mesh.obj", "gaussians.pt", "gaussians.ply", "report.json"} <= files[-1]
    assert result.mesh_glb.is_file() and len(result.mesh.faces) > 0


def test_reconstruct_without_an_output_dir_writes_nothing(tmp_path, monkeypatch):
    views = load_views(_write_views(tmp_path / "views", _disc_views()), 0.0)
    monkeypatch.chdir(tmp_path / "views")
    before = sorted(p.name for p in (tmp_path / "views").iterdir())
    config = ReconstructConfig(fit=FitConfig(iterations=3, num_init=200, init_resolution=24, backend="torch"),
                               resolution=None, num_novel_views=0, mesh_resolution=24, texture_size=32)
    result = reconstruct(views, 0.0, None, config, device="cpu", progress=False)
    assert sorted(p.name for p in (tmp_path / "views").iterdir()) == before and sorted(tmp_path.iterdir()) == [
        tmp_path / "views"]
    assert result.mesh_glb is None and result.scene_ply is None and len(result.fit.scene) > 0
    assert result.textured.texture.shape == (32, 32, 3) and len(result.mesh.faces) > 0


def result_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_reconstruct_script_reports_bad_input(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("reconstruct_3d", ROOT / "scripts" / "reconstruct_3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = _write_views(tmp_path / "views", _disc_views(5))
    with pytest.raises(SystemExit) as exit_info:
        module.run_main(lambda: module.main(["--views", str(folder), "--output_dir", str(tmp_path / "out")]))
    assert exit_info.value.code == 2
    assert "found 5 views" in capsys.readouterr().err
