"""The geometric memory of world_model.memory against a plain-Python reference; bounds, reset, cloning."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from world_model.memory import MemoryConfig, MemoryPool

FRAME = (2, 3, 3)  # (C, h, w)


def random_pose(rng, spread: float = 3.0) -> torch.Tensor:
    T = torch.eye(4)
    T[:3, :3] = torch.tensor(Rotation.random(random_state=rng).as_matrix(), dtype=torch.float32)
    T[:3, 3] = torch.tensor(rng.uniform(-spread, spread, 3), dtype=torch.float32)
    return T


class ReferencePool:
    """One world's memory as a list, written from the docstring of MemoryPool; ψ by sorting."""

    def __init__(self, config: MemoryConfig):
        self.config, self.entries = config, []  # entries oldest first: (key, pose, frame)

    def key(self, pose: np.ndarray):
        cell = tuple(math.floor(float(np.float32(x) / np.float32(self.config.cell_size))) for x in pose[:3, 3])
        heading = math.atan2(pose[0, 2], pose[2, 2])
        return cell, math.floor((heading + math.pi) / (2 * math.pi) * self.config.yaw_bins) % self.config.yaw_bins

    def add(self, pose: np.ndarray, frame: np.ndarray) -> None:
        key = self.key(pose)
        self.entries = [e for e in self.entries if e[0] != key]  # the fresher view replaces
        if len(self.entries) == self.config.capacity:
            self.entries.pop(0)  # evict the least recently written
        self.entries.append((key, pose, frame))

    def retrieve(self, query: np.ndarray):
        if not self.entries:
            return None
        by_distance = sorted(self.entries, key=lambda e: np.linalg.norm(e[1][:3, 3] - query[:3, 3]))
        near = by_distance[: self.config.k]

        def axis_angle(e):
            return math.acos(np.clip(np.dot(e[1][:3, 2], query[:3, 2]), -1.0, 1.0))

        return min(near, key=axis_angle)


@pytest.mark.parametrize("seed", range(6))
def test_retrieval_matches_reference(seed):
    rng = np.random.default_rng(seed)
    config = MemoryConfig(capacity=int(rng.integers(3, 12)), k=int(rng.integers(1, 6)), cell_size=1.5, yaw_bins=4)
    B = 3
    pool = MemoryPool(config, B, FRAME)
    refs = [ReferencePool(config) for _ in range(B)]
    for step in range(40):
        poses = torch.stack([random_pose(rng) for _ in range(B)])  # (B, 4, 4)
        frames = torch.randn(B, *FRAME)
        mask = torch.tensor(rng.random(B) < 0.7)
        mask[2] = mask[2] & (step >= 30)  # world 2 stays empty for a while
        pool.add(frames, poses, mask)
        for b in range(B):
            if mask[b]:
                refs[b].add(poses[b].double().numpy(), frames[b].numpy())
        queries = torch.stack([random_pose(rng) for _ in range(B)])
        frame, pose, found = pool.retrieve(queries)
        assert pool.sizes().tolist() == [len(r.entries) for r in refs]
        for b in range(B):
            expected = refs[b].retrieve(queries[b].double().numpy())
            assert bool(found[b]) == (expected is not None)
            if expected is None:
                assert not frame[b].any() and not pose[b].any()
            else:
                assert np.array_equal(pose[b].numpy(), expected[1].astype(np.float32))
                assert np.array_equal(frame[b].numpy(), expected[2])


def test_size_is_bounded_over_a_long_walk():
    rng = np.random.default_rng(0)
    config = MemoryConfig(capacity=64, k=5, cell_size=0.5, yaw_bins=8)
    B = 2
    pool = MemoryPool(config, B, FRAME)
    refs = [ReferencePool(config) for _ in range(B)]
    pos, yaw = np.zeros((B, 3)), np.zeros(B)
    for step in range(2000):
        # A random walk in a 4 m x 4 m room, turning as it goes: revisits are frequent, and the room's
        # 8 x 8 cells x 8 headings exceed the capacity.
        pos = np.clip(pos + rng.normal(0, 0.2, (B, 3)) * [1, 0, 1], -2, 2)
        yaw = yaw + rng.normal(0, 0.3, B)
        c2w = torch.eye(4).repeat(B, 1, 1)
        c2w[:, :3, :3] = torch.tensor(Rotation.from_euler("y", yaw[:, None]).as_matrix(), dtype=torch.float32)
        c2w[:, :3, 3] = torch.tensor(pos, dtype=torch.float32)
        frames = torch.full((B, *FRAME), float(step))
        pool.add(frames, c2w)
        for b in range(B):
            refs[b].add(c2w[b].double().numpy(), frames[b].numpy())
        assert (pool.sizes() <= config.capacity).all()
    assert pool.sizes().tolist() == [config.capacity] * B
    valid = pool.state["valid"]
    for b in range(B):
        cells, headings = pool.state["cell"][b][valid[b]].tolist(), pool.state["heading"][b][valid[b]].tolist()
        keys = set(zip(map(tuple, cells), headings))
        assert len(keys) == config.capacity  # one entry per (cell, heading bin)
        # The freshest view of each of the 64 most recently visited (cell, heading) pairs.
        stored = sorted(pool.state["frame"][b][valid[b]][:, 0, 0, 0].tolist())
        assert stored == sorted(float(e[2][0, 0, 0]) for e in refs[b].entries)


def test_same_cell_and_heading_keeps_the_fresher_view():
    pool = MemoryPool(MemoryConfig(capacity=4, cell_size=1.0, yaw_bins=4), 1, FRAME)
    pose = torch.eye(4)[None]
    nearby = pose.clone()
    nearby[0, :3, 3] = torch.tensor([0.3, 0.2, 0.4])  # same cell, same heading
    pool.add(torch.zeros(1, *FRAME), pose)
    pool.add(torch.ones(1, *FRAME), nearby)
    assert pool.sizes().tolist() == [1]
    frame, c2w, found = pool.retrieve(pose)
    assert found.item() and torch.equal(c2w, nearby) and (frame == 1).all()
    for i in range(5):  # distinct cells: the oldest entries are evicted
        far = pose.clone()
        far[0, 0, 3] = 10.0 * (i + 1)
        pool.add(torch.full((1, *FRAME), 2.0 + i), far)
    assert pool.sizes().tolist() == [4]
    assert sorted(pool.state["frame"][0, :, 0, 0, 0].tolist()) == [3.0, 4.0, 5.0, 6.0]


def test_empty_pool_finds_nothing():
    pool = MemoryPool(MemoryConfig(), 2, FRAME)
    frame, c2w, found = pool.retrieve(torch.eye(4).repeat(2, 1, 1))
    assert not found.any() and not frame.any() and not c2w.any()
    assert frame.shape == (2, *FRAME) and c2w.shape == (2, 4, 4)


def test_reset_clears_only_masked_worlds():
    pool = MemoryPool(MemoryConfig(), 3, FRAME)
    rng = np.random.default_rng(1)
    for _ in range(4):
        pool.add(torch.randn(3, *FRAME), torch.stack([random_pose(rng) for _ in range(3)]))
    pool.reset(torch.tensor([False, True, False]))
    assert pool.sizes().tolist() == [4, 0, 4]
    assert pool.retrieve(torch.eye(4).repeat(3, 1, 1))[2].tolist() == [True, False, True]
    pool.reset()
    assert pool.sizes().tolist() == [0, 0, 0]


def test_clone_select_and_load_state_are_independent():
    rng = np.random.default_rng(2)
    pool = MemoryPool(MemoryConfig(), 2, FRAME)
    pool.add(torch.randn(2, *FRAME), torch.stack([random_pose(rng) for _ in range(2)]))
    copy = pool.clone()
    copy.add(torch.randn(2, *FRAME), torch.stack([random_pose(rng) for _ in range(2)]))
    assert pool.sizes().tolist() == [1, 1] and copy.sizes().tolist() == [2, 2]

    many = pool.select(torch.tensor([1, 1, 1]))  # one world expanded to three candidates
    assert many.batch_size == 3 and many.sizes().tolist() == [1, 1, 1]
    query = torch.stack([random_pose(rng)] * 3)
    assert torch.equal(many.retrieve(query)[0][0], pool.retrieve(query[:2])[0][1])
    many.add(torch.randn(3, *FRAME), query, torch.tensor([True, False, False]))
    assert many.sizes().tolist() == [2, 1, 1] and pool.sizes().tolist() == [1, 1]

    pool.load_state(copy)
    assert pool.sizes().tolist() == [2, 2]
    copy.reset()
    assert pool.sizes().tolist() == [2, 2]
    with pytest.raises(ValueError, match="shape"):
        pool.load_state(many)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="capacity"):
        MemoryPool(MemoryConfig(capacity=0), 1, FRAME)
    with pytest.raises(ValueError, match="cell_size"):
        MemoryPool(MemoryConfig(cell_size=0.0), 1, FRAME)
