"""jaxnet.detection.scenes: the synthetic scenes (NumPy, cached) -- shapes, consistency of boxes,
masks and labels, determinism, disjoint splits, bad arguments; CIFAR-10 objects when a copy exists."""

import numpy as np
import pytest

from cifar_copy import cifar10_or_skip
from jaxnet.detection import scenes as sc


@pytest.fixture(scope="module")
def batch():
    return sc.make_scenes(40, split="train", seed=3, size=64)


def test_shapes_dtypes_and_padding(batch):
    n, k = 40, 6
    assert batch.images.shape == (n, 64, 64, 3) and batch.images.dtype == np.float32
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    assert batch.labels.shape == (n, k) and batch.labels.dtype == np.int32
    assert batch.boxes.shape == (n, k, 4) and batch.boxes.dtype == np.float32
    assert batch.valid.shape == (n, k) and batch.valid.dtype == bool
    assert batch.semantic.shape == batch.instances.shape == (n, 64, 64)
    counts = batch.valid.sum(1)
    assert counts.min() >= 1 and counts.max() <= 6 and len(np.unique(counts)) >= 3     # 1-6 objects, varied
    # slots fill from 0; empty slots are -1 / zero boxes
    assert np.all(batch.valid == (np.arange(k)[None] < counts[:, None]))
    assert np.all(batch.labels[~batch.valid] == -1) and np.all(batch.boxes[~batch.valid] == 0)
    assert np.all((batch.labels[batch.valid] >= 0) & (batch.labels[batch.valid] < 10))
    assert batch.num_classes == 10


def test_boxes_masks_and_labels_agree(batch):
    masks = sc.instance_masks(batch)
    assert masks.shape == (40, 6, 64, 64)
    for i in range(len(batch)):
        for k in range(6):
            if not batch.valid[i, k]:
                assert not masks[i, k].any()
                continue
            x0, y0, x1, y1 = batch.boxes[i, k]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            ys, xs = np.nonzero(masks[i, k])
            assert len(ys) > 0                                  # at most half of an object is hidden
            # the visible pixels lie inside the box (the box is the tight box of the unoccluded mask)
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            assert np.all(batch.semantic[i][masks[i, k]] == batch.labels[i, k] + 1)
    assert np.all((batch.semantic == 0) == (batch.instances == 0))
    sizes = (batch.boxes[..., 2:] - batch.boxes[..., :2])[batch.valid]
    assert sizes.max() > 24 and np.median(sizes) > 8               # objects are scaled up, not 8x8


def test_deterministic_and_splits_differ(batch):
    again = sc.make_scenes(5, split="train", seed=3, size=64)
    np.testing.assert_array_equal(again.images, batch.images[:5])   # scene i does not depend on n
    np.testing.assert_array_equal(again.boxes, batch.boxes[:5])
    val = sc.make_scenes(5, split="val", seed=3)
    other = sc.make_scenes(5, split="train", seed=4)
    assert not np.allclose(val.images, batch.images[:5]) and not np.allclose(other.images, batch.images[:5])


def test_load_scenes_cached_readonly_and_sizes():
    a = sc.load_scenes(6, 2, 3, seed=1, size=96, min_objects=1, max_objects=1)
    b = sc.load_scenes(6, 2, 3, seed=1, size=96, min_objects=1, max_objects=1)
    assert a is b and (len(a.train), len(a.val), len(a.test)) == (6, 2, 3)
    assert a.train.images.shape == (6, 96, 96, 3) and np.all(a.train.valid.sum(1) == 1)
    with pytest.raises(ValueError):
        a.train.images[0, 0, 0, 0] = 1.0                            # read-only: shared by the cache
    sub = a.train.take(np.array([1, 3]))
    np.testing.assert_array_equal(sub.labels, a.train.labels[[1, 3]])


@pytest.mark.parametrize("kwargs, message", [
    ({"n": -1}, "make_scenes: n must be"),
    ({"size": 16}, "make_scenes: size must be"),
    ({"min_objects": 3, "max_objects": 2}, "make_scenes: min_objects must be"),
    ({"split": "dev"}, "make_scenes: split must be"),
    ({"scale": (0.6, 0.3)}, "make_scenes: scale must satisfy"),
    ({"scale": 0.3}, "make_scenes: scale must be a pair"),
    ({"source": "imagenet"}, "object_pool: source must be"),
    ({"source": "cifar10"}, "object_pool: source='cifar10' needs data_dir"),
])
def test_bad_arguments(kwargs, message):
    args = {"n": 2, **kwargs}
    with pytest.raises(ValueError) as e:
        sc.make_scenes(args.pop("n"), **args)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_instance_masks_needs_max_objects():
    with pytest.raises(ValueError, match="instance_masks: an instance map needs max_objects"):
        sc.instance_masks(np.zeros((1, 4, 4), np.int32))
    m = sc.instance_masks(np.array([[[0, 1], [2, 2]]]), max_objects=3)
    assert m.shape == (1, 3, 2, 2) and m[0, 1].sum() == 2 and not m[0, 2].any()


def test_cifar_objects_when_a_copy_exists():
    path = cifar10_or_skip()
    s = sc.make_scenes(6, split="test", seed=0, size=96, source="cifar10", data_dir=path)
    assert s.images.shape == (6, 96, 96, 3) and s.classes[0] == "airplane"
    assert s.valid.sum() >= 6 and np.all((s.labels[s.valid] >= 0) & (s.labels[s.valid] < 10))
    assert np.all((s.semantic > 0) == (s.instances > 0)) and (s.semantic > 0).mean() > 0.05
