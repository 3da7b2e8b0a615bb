"""Orbit-clip datasets (stage 1 and 2), the eval image folder and the clip degradation callable.

The object folders here are written by the tests: view ``v`` of an object is a flat colour
whose red channel is ``v``, so every frame of a clip tells which file it came from.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sgm.common.orbit import RING_ELEVATIONS_DEG
from sgm.data.clip_degradation import ClipDegradation
from sgm.data.video_dataset import (
    DatasetError,
    EpochSeededSampler,
    EvalImageFolder,
    OrbitClipDataset,
    VideoDataset,
    clip_positions,
)
from sgm.data.video_dataset_stage2_degradeImages import OrbitClipKernelDataset
from sgm.data.video_dataset_stage2_degradeImages import VideoDataset as Stage2VideoDataset

SIZE = 8
VIEWS = len(RING_ELEVATIONS_DEG) * 16


def view_pixels(view: int, size: int = SIZE) -> np.ndarray:
    """Opaque RGBA (size, size, 4) whose red channel is the view index."""
    pixels = np.zeros((size, size, 4), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2], pixels[..., 3] = view, 255 - view, 17, 255
    return pixels


def write_object(folder: Path, views: int = VIEWS, size: int = SIZE) -> Path:
    folder.mkdir(parents=True)
    for view in range(views):
        Image.fromarray(view_pixels(view, size), mode="RGBA").save(folder / f"{view:03d}.png")
    return folder


def views_of(video: torch.Tensor) -> list[int]:
    """View index of each frame of (3, T, H, W) in [-1, 1] (red channel, opaque renders)."""
    red = ((video[0, :, 0, 0] + 1.0) * 127.5).round().long()
    return red.tolist()


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    for name in ("obj_a", "obj_b", "obj_c"):
        write_object(tmp_path / "data" / name)
    return tmp_path / "data"


def test_item_layout(objects: Path):
    dataset = OrbitClipDataset(objects, width=SIZE, height=SIZE)
    assert len(dataset) == 3
    item = dataset[0]
    assert item["video"].shape == (3, 16, SIZE, SIZE) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1.0 and item["video"].max() <= 1.0
    assert item["elevation"] in RING_ELEVATIONS_DEG and isinstance(item["elevation"], int)
    assert item["caption"].startswith("obj_a_")
    assert (item["fps_id"], item["motion_bucket_id"]) == (7, 127)
    assert [dataset[i]["caption"].rsplit("_", 1)[0] for i in range(4)] == ["obj_a", "obj_b", "obj_c", "obj_a"]


def test_clip_positions_wrap_within_ring():
    assert clip_positions(ring=2, start=14, num_frames=16, views_per_ring=16) == [46, 47, *range(32, 46)]
    assert clip_positions(ring=0, start=0, num_frames=4, views_per_ring=16) == [0, 1, 2, 3]


def test_clips_are_one_ring_of_consecutive_azimuths(objects: Path):
    dataset = OrbitClipDataset(objects, width=SIZE, height=SIZE, seed=3)
    rings_seen, wrapped = set(), False
    for index in range(40):
        item = dataset[index]
        views = views_of(item["video"])
        ring, start = divmod(views[0], 16)
        assert views == clip_positions(ring, start, 16, 16), f"item {index}: views {views}"
        assert item["elevation"] == RING_ELEVATIONS_DEG[ring]
        assert item["caption"].endswith(f"_{views[0]}")
        rings_seen.add(ring)
        wrapped |= start > 0
    assert wrapped and len(rings_seen) >= 4


def test_composited_on_white_and_resized(tmp_path: Path):
    folder = write_object(tmp_path / "data" / "obj")
    rgba = view_pixels(5)
    rgba[:4, :, 3] = 0            # top half transparent
    rgba[4:, :4, 3] = 128         # bottom-left half covered
    for view in range(VIEWS):
        Image.fromarray(rgba, mode="RGBA").save(folder / f"{view:03d}.png")
    video = OrbitClipDataset(tmp_path / "data", width=SIZE, height=SIZE)[0]["video"]
    assert torch.all(video[:, :, :4] == 1.0), "transparent pixels must be white"
    a = np.float32(128) / np.float32(255)
    expected = (np.array([5, 250, 17], np.float32) / np.float32(255) * a + (1 - a)) * np.float32(255)
    expected = torch.tensor(expected.astype(np.uint8).astype(np.float32) / 127.5 - 1.0)
    assert torch.equal(video[:, 0, 4, 0], expected)  # truncated to 8 bits, then [-1, 1]
    assert torch.equal(video[:, 0, 4, 7], torch.tensor([5, 250, 17]) / 127.5 - 1.0)
    small = OrbitClipDataset(tmp_path / "data", width=4, height=6)[0]["video"]
    assert small.shape == (3, 16, 6, 4)


def test_bad_folders_skipped_with_warning(objects: Path, caplog: pytest.LogCaptureFixture):
    short = write_object(objects / "short_one", views=VIEWS - 1)
    corrupt = write_object(objects / "corrupt_one")
    (corrupt / "010.png").write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING):
        dataset = OrbitClipDataset(objects, width=SIZE, height=SIZE)
    assert sorted(o.name for o in dataset.objects) == ["obj_a", "obj_b", "obj_c"]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert str(short) in messages and "95 PNG files" in messages
    assert str(corrupt) in messages and "010.png" in messages


def test_unreadable_file_at_run_time_is_replaced(objects: Path, caplog: pytest.LogCaptureFixture):
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    for path in (objects / "obj_a").glob("*.png"):   # valid header, truncated pixel data
        Image.fromarray(noise, mode="RGBA").save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with Image.open(path) as image:
            assert image.size == (SIZE, SIZE)
    dataset = OrbitClipDataset(objects, width=SIZE, height=SIZE, check_headers=False)
    assert len(dataset) == 3
    with caplog.at_level(logging.WARNING):
        item = dataset[0]
    assert item["caption"].startswith("obj_b_")
    assert any("obj_a" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)


def test_empty_or_missing_data_is_a_clear_error(tmp_path: Path):
    write_object(tmp_path / "data" / "only_short", views=16)
    with pytest.raises(DatasetError, match="no usable object folder"):
        OrbitClipDataset(tmp_path / "data", width=SIZE, height=SIZE)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        OrbitClipDataset(tmp_path / "nowhere", width=SIZE, height=SIZE)


def test_seed_fixes_the_data(objects: Path):
    first = OrbitClipDataset(objects, width=SIZE, height=SIZE, seed=11)
    again = OrbitClipDataset(objects, width=SIZE, height=SIZE, seed=11)
    other = OrbitClipDataset(objects, width=SIZE, height=SIZE, seed=12)
    captions = [first[i]["caption"] for i in range(12)]
    assert captions == [again[i]["caption"] for i in range(12)]
    assert all(torch.equal(first[i]["video"], again[i]["video"]) for i in range(3))
    assert captions != [other[i]["caption"] for i in range(12)]
    # The next epoch (index + N) gives the same object with a new draw.
    assert [first[i + 3]["caption"].rsplit("_", 1)[0] for i in range(3)] == ["obj_a", "obj_b", "obj_c"]


def test_sampler_shards_objects_and_moves_on_each_epoch(objects: Path):
    dataset = OrbitClipDataset(objects, width=SIZE, height=SIZE)
    ranks = [EpochSeededSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=0) for r in range(2)]
    epoch0 = [list(s) for s in ranks]
    assert {i % 3 for part in epoch0 for i in part} == {0, 1, 2}
    assert all(0 <= i < 3 for part in epoch0 for i in part)
    for sampler in ranks:
        sampler.set_epoch(1)
    assert all(3 <= i < 6 for s in ranks for i in s)


def test_datamodule_batches(objects: Path):
    data = VideoDataset(base_folder=str(objects), width=SIZE, height=SIZE, batch_size=2, seed=5)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["video"].shape == (2, 3, 16, SIZE, SIZE)
    assert batch["elevation"].dtype == torch.int64 and batch["elevation"].shape == (2,)
    assert len(batch["caption"]) == 2


def test_loader_workers_persist_across_epochs_and_give_the_same_batches(objects: Path):
    def epochs(workers: int) -> tuple[list[list[int]], object]:
        data = VideoDataset(base_folder=str(objects), width=SIZE, height=SIZE, batch_size=2, seed=5,
                            num_workers=workers)
        data.setup()
        loader = data.train_dataloader()
        seen = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            seen.append([views_of(video) for batch in loader for video in batch["video"]])
        return seen, loader

    in_process, _ = epochs(0)
    with_workers, loader = epochs(1)
    assert loader.persistent_workers and loader._iterator is not None  # the workers were not ended
    assert with_workers == in_process
    assert in_process[0] != in_process[1]  # each epoch draws fresh clips


def test_eval_folder(tmp_path: Path):
    folder = tmp_path / "eval"
    folder.mkdir()
    rgba = view_pixels(9, size=12)
    rgba[:, :6, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(folder / "b.png")
    Image.fromarray(view_pixels(3, size=12)[..., :3], mode="RGB").save(folder / "a.png")
    (folder / "notes.txt").write_text("ignored")
    dataset = EvalImageFolder(folder, width=SIZE, height=SIZE)
    assert len(dataset) == 2 and dataset[0]["path"].endswith("a.png")
    image = dataset[1]["input_image"]
    assert image.shape == (3, SIZE, SIZE) and image.min() >= -1 and image.max() <= 1
    assert torch.all(image[:, :, :3] == 1.0)  # transparent half is white
    assert dataset[1]["elevation"] == 0


def test_stage2_items_have_masks_and_kernels(tmp_path: Path):
    folder = write_object(tmp_path / "data" / "obj", size=16)
    rgba = view_pixels(1, size=16)
    rgba[:, :8, 3] = 0
    for view in range(VIEWS):
        Image.fromarray(rgba, mode="RGBA").save(folder / f"{view:03d}.png")
    dataset = OrbitClipKernelDataset(tmp_path / "data", width=8, height=8, seed=4)
    item = dataset[0]
    assert item["caption"] == "obj"
    assert item["masks"].shape == (16, 8, 8) and item["masks"].dtype == torch.float32
    assert torch.all(item["masks"][:, :, :3] == 0) and torch.all(item["masks"][:, :, 5:] == 1)
    for key in ("kernel1s", "kernel2s", "sinc_kernels"):
        assert item[key].shape == (16, 21, 21)
        assert torch.allclose(item[key].sum(dim=(1, 2)), torch.ones(16), atol=1e-4)
    again = OrbitClipKernelDataset(tmp_path / "data", width=8, height=8, seed=4)[0]
    assert torch.equal(item["kernel1s"], again["kernel1s"]) and torch.equal(item["sinc_kernels"], again["sinc_kernels"])
    assert not torch.equal(item["kernel1s"], dataset[1]["kernel1s"])


@pytest.fixture
def stage2_batch(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    for name in ("obj_a", "obj_b"):
        folder = write_object(tmp_path / "data" / name, size=32)
        for view in range(VIEWS):
            rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
            rgba[..., 3] = 255
            rgba[:, :10, 3] = 0
            Image.fromarray(rgba, mode="RGBA").save(folder / f"{view:03d}.png")
    data = Stage2VideoDataset(base_folder=str(tmp_path / "data"), width=32, height=32, batch_size=2)
    data.setup()
    return next(iter(data.train_dataloader()))


def test_clip_degradation(stage2_batch: dict):
    degrade = ClipDegradation()
    out = degrade(stage2_batch, torch.Generator().manual_seed(0))
    video = stage2_batch["video"]
    assert out.shape == (2 * 16, 3, 32, 32) and out.dtype == video.dtype
    assert out.min() >= -1.0 and out.max() <= 1.0
    frames = out.reshape(2, 16, 3, 32, 32)
    assert torch.allclose(frames[:, 0], video[:, :, 0], atol=1e-6), "frame 0 must stay clean"
    assert (frames[:, 1:] - video.transpose(1, 2)[:, 1:]).abs().mean() > 0.05, "frames 1.. must be degraded"
    assert torch.all(frames[:, 1:, :, :, :10] == 1.0), "transparent pixels must be white"
    same = degrade(stage2_batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    with pytest.raises(KeyError, match="kernel1s"):
        degrade({k: v for k, v in stage2_batch.items() if k != "kernel1s"}, None)
