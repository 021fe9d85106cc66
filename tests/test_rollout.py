"""Sliding-window rollout with memory: long, batched, bounded, scale-equivariant, branchable."""
import gymnasium as gym
import pytest
import torch
from tensordict import TensorDict

import deepverse_env  # noqa: F401
import world_model.rollout
from world_model.memory import MemoryConfig
from world_model.rollout import Rollout, RolloutConfig
from world_model.text import SENTENCES

WALK = ["The camera moves forward.", "The camera stays in place, turning left.", "The camera moves forward, turning right."]


def first_frames(B, seed=1, size=16):
    env = gym.make("DeepVerseSim-v0", height=size, width=size)
    frames = [env.reset(seed=seed + i)[0] for i in range(B)]
    stack = lambda k: torch.stack([torch.from_numpy(f[k]) for f in frames])  # noqa: E731
    return stack("rgb"), stack("depth"), stack("intrinsics")


def make(model, B, seed=0, **config):
    return Rollout(model, B, RolloutConfig(**config), generator=torch.Generator().manual_seed(seed))


def test_fifty_chunk_batched_rollout_is_finite_and_bounded(tiny_model):
    B, capacity = 3, 8
    r = make(tiny_model, B, cache_max=3, memory=MemoryConfig(capacity=capacity))
    r.reset(*first_frames(B))
    size = None
    for i in range(50):
        chunk = r.step([WALK[(i + b) % 3] for b in range(B)])
        size = size or r.nbytes()
        assert r.nbytes() == size  # windows, decoder stream and pool are allocated once
        assert chunk["rgb"].shape == (B, 4, 16, 16, 3) and chunk["rgb"].dtype == torch.uint8
        for key in ("depth", "pose", "intrinsics"):
            assert torch.isfinite(chunk[key]).all(), (i, key)
        assert (chunk["depth"] > 0).all()
        assert (r.length <= 3).all() and (r.memory.sizes() <= capacity).all()
    # Bound: window tensors are preallocated, the pool never exceeds its capacity.
    assert r.latents.shape[1] == 3 and r.frames.shape[1] == 1 + 2 * 4
    assert (r.memory.sizes() == capacity).any()


def test_same_scene_at_two_scales_gives_the_same_rgb(tiny_model):
    """Scale-equivariant, as long as no size is assumed in metres: the body's sizes are in eye heights, and
    the eye height is measured from the start frame's floor where it shows one (these starts do not)."""
    rgb, depth, K = first_frames(2, seed=7)
    runs = []
    for factor in (1.0, 3.0):
        r = make(tiny_model, 2, seed=5, cache_max=3, eye_height=None)
        r.reset(rgb, depth * factor, K)
        runs.append([r.step(WALK[:2]) for _ in range(7)])  # two window slides, memory in use
    for a, b in zip(*runs):
        assert (a["rgb"].int() - b["rgb"].int()).abs().max() <= 1
        # depth = scale / e^2 amplifies float noise where an untrained model predicts e near 0.
        ratio = b["depth"] / (3.0 * a["depth"])
        assert (ratio - 1).abs().median() < 1e-4 and (ratio - 1).abs().max() < 0.05
        assert torch.allclose(b["pose"][..., :3, 3], 3.0 * a["pose"][..., :3, 3], rtol=1e-3, atol=1e-4)
        assert torch.allclose(b["pose"][..., :3, :3], a["pose"][..., :3, :3], atol=1e-4)


def test_seeded_rollouts_repeat_and_clones_branch(tiny_model):
    frames = first_frames(2)
    a, b = make(tiny_model, 2, seed=3), make(tiny_model, 2, seed=3)
    a.reset(*frames), b.reset(*frames)
    for _ in range(3):
        assert torch.equal(a.step(WALK[:2])["rgb"], b.step(WALK[:2])["rgb"])
    branch = a.select(torch.tensor([1, 1, 0]))  # one state -> many candidates
    assert branch.B == 3 and torch.equal(branch.latents[0], a.latents[1])
    before = a.latents.clone()
    branch.step(WALK)
    assert torch.equal(a.latents, before)  # branching never touches the source
    snapshot = a.clone()
    a.step(WALK[:2])
    a.load(snapshot)
    assert torch.equal(a.latents, snapshot.latents)


def test_start_from_image_alone_and_partial_reset(tiny_model):
    rgb, depth, K = first_frames(2)
    r = make(tiny_model, 2)
    r.reset(rgb, depth, K)
    r.step(WALK[:2])
    first = r.reset(rgb[:1], mask=torch.tensor([True, False]))
    assert torch.equal(first["rgb"], rgb[:1]) and torch.equal(first["pose"][0], torch.eye(4))
    assert (first["depth"] > 0).all() and first["intrinsics"][0, 0, 0] > 0
    assert r.length.tolist() == [1, 2]
    chunk = r.step(WALK[:2])  # worlds at different window lengths step together
    assert r.length.tolist() == [2, 3] and torch.isfinite(chunk["depth"]).all()


def test_bad_inputs(tiny_model):
    rgb, depth, K = first_frames(1)
    r = make(tiny_model, 1)
    with pytest.raises(RuntimeError, match="reset"):
        r.step(WALK[:1])
    with pytest.raises(ValueError, match=r"rgb must be a tensor of shape \(1, 16, 16, 3\)"):
        r.reset(rgb[..., :2])
    bad = depth.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="depth has NaN"):
        r.reset(rgb, bad, K)
    with pytest.raises(ValueError, match="s_text must be a finite guidance scale, got nan"):
        make(tiny_model, 1, sampler={"s_text": float("nan")})
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        make(tiny_model, 1, sampler={"steps": 0})
    with pytest.raises(ValueError, match=r"scale_quantile must be in \[0, 0.5\), got 0.7"):
        make(tiny_model, 1, scale_quantile=0.7)
    with pytest.raises(ValueError, match="together"):
        r.reset(rgb, depth)
    r.reset(rgb, depth, K)
    with pytest.raises(ValueError, match="2 sentences for 1 worlds"):
        r.step(WALK[:2])
    with pytest.raises(ValueError, match="unknown word"):
        r.step(["The camera flies."])
    assert r.step([SENTENCES[0]])["rgb"].shape[0] == 1  # still usable after rejected calls
    with pytest.raises(ValueError, match="keep"):
        make(tiny_model, 1, cache_max=2, keep=2)


def test_a_slide_rescales_from_the_depth_not_from_a_few_outlier_pixels(tiny_model, monkeypatch):
    """Generated depth has a few pixels far nearer than the surface around them; re-anchoring a window on
    its nearest pixel would shrink the scale at every slide (the shipped model: to 1e-15 in 600 steps)."""
    to_frames = world_model.rollout.to_frames

    def with_outliers(*args):
        frames = to_frames(*args)
        frames["depth"][:, :, 0, :2] *= 1e-3  # 2 of 256 pixels per frame
        return frames

    monkeypatch.setattr(world_model.rollout, "to_frames", with_outliers)  # what the rollout generates
    ratio = {}
    for quantile in (0.0, 0.01):
        r = make(tiny_model, 1, cache_max=2, scale_quantile=quantile)  # keep = 1: a slide every other step
        r.reset(*first_frames(1))
        start = float(r.scale[0])
        for _ in range(6):
            chunk = r.step(WALK[:1])
            assert torch.isfinite(chunk["depth"]).all() and (chunk["depth"] > 0).all()
        ratio[quantile] = float(r.scale[0]) / start
    assert ratio[0.0] <= 4.0**-3 * 1.001, ratio  # anchored on the outliers: max_rescale smaller every slide
    assert ratio[0.01] > 4.0**2 * ratio[0.0], ratio


def test_worlds_at_different_window_lengths_share_one_model_call(tiny_model, monkeypatch):
    """Windows of length m and longer give the MM-DiT the same history length: one call for all of them,
    however far each window has grown (a restarted world used to split the batch by window length)."""
    r = make(tiny_model, 3, seed=1, cache_max=6)
    r.reset(*first_frames(3))
    for _ in range(2):
        r.step(WALK[:3])
    mask = torch.tensor([True, False, False])
    r.reset(*(x[:1] for x in first_frames(3)), mask=mask)  # world 0 restarts: lengths (1, 3, 3)
    for _ in range(3):
        r.step(WALK[:3])
    assert r.length.tolist() == [4, 6, 6] and tiny_model.history_frames == 4
    calls = []
    original = tiny_model.next_latent
    monkeypatch.setattr(tiny_model, "next_latent", lambda history, *a, **k: calls.append(history.shape[1]) or original(history, *a, **k))
    chunk = r.step(WALK[:3])
    assert calls == [4]  # one call with 4 history frames for windows of 4, 6 and 6
    assert r.length.tolist() == [5, 4, 4]  # world 0 grew, worlds 1 and 2 slid (keep 4)
    assert all(torch.isfinite(chunk[k].float()).all() for k in ("depth", "pose", "intrinsics"))


def test_generated_frames_keep_the_start_intrinsics(tiny_model):
    """No action zooms: with ``fixed_intrinsics`` every frame has the start frame's K; without, the raymap's."""
    rgb, depth, K = first_frames(2)
    for fixed in (True, False):
        r = make(tiny_model, 2, seed=2, cache_max=3, fixed_intrinsics=fixed)
        r.reset(rgb, depth, K)
        chunks = [r.step(WALK[:2]) for _ in range(4)]  # a slide re-encodes the kept frames' intrinsics
        same = all(torch.equal(c["intrinsics"], K[:, None].expand_as(c["intrinsics"])) for c in chunks)
        assert same == fixed
    with pytest.raises(ValueError, match="fixed_intrinsics must be True or False, got 'yes'"):
        make(tiny_model, 1, fixed_intrinsics="yes")


def test_a_slide_pulls_the_window_scale_towards_the_start_frame(tiny_model):
    """The start frame sets how many metres the window is: kept frames whose depth came out 2x too far
    are brought back (all the way at metric_anchor 1, half-way in log scale at 0.5), translations about the
    first kept camera with them; seen from behind, the floor alone still measures it; a frame that neither
    sees the start frame's surfaces nor a floor keeps its scale."""
    rgb, depth, K = first_frames(1, seed=4)  # a start that sees the floor
    step = torch.eye(4)
    step[0, 3] = 0.2  # a second kept frame 0.2 m to the right of the first
    kept = TensorDict({
        "rgb": rgb[:, None].repeat(1, 2, 1, 1, 1), "depth": 2 * depth[:, None].repeat(1, 2, 1, 1, 1),
        "pose": torch.stack([torch.eye(4), step])[None], "intrinsics": K[:, None].repeat(1, 2, 1, 1),
    }, [1, 2])
    world = torch.tensor([0])
    for strength, factor in ((1.0, 0.5), (0.5, 0.5**0.5), (0.0, 1.0)):
        r = make(tiny_model, 1, metric_anchor=strength)
        r.reset(rgb, depth, K)
        assert float(r.floor[0]) == pytest.approx(1.5, rel=1e-4)  # the simulator's eye height
        out = r._anchor_to_start(world, kept)
        assert torch.allclose(out["depth"], kept["depth"] * factor, rtol=1e-5)
        assert torch.allclose(out["pose"][0, 1, 0, 3], torch.tensor(0.2 * factor), rtol=1e-5)
        assert torch.equal(out["pose"][0, 0], torch.eye(4)) and torch.equal(out["rgb"], kept["rgb"])
    behind = kept.clone()
    behind["pose"] = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0])) @ kept["pose"]  # turned around
    r = make(tiny_model, 1, metric_anchor=1.0)
    r.reset(rgb, depth, K)
    out = r._anchor_to_start(world, behind)
    assert torch.allclose(out["depth"], behind["depth"] * 0.5, rtol=1e-5)  # the floor is 3 m down, not 1.5
    skewed = behind.clone()  # poses rigid only approximately: the first camera stays exactly where it is
    skewed["pose"][..., :3, :3] *= 1.01
    out = r._anchor_to_start(world, skewed)
    assert torch.allclose(out["pose"][:, 0], skewed["pose"][:, 0], atol=1e-6)
    wall = behind.clone()
    wall["depth"] = torch.full_like(behind["depth"], 2.0)  # a wall filling the view: no floor
    out = r._anchor_to_start(world, wall)
    assert torch.equal(out["depth"], wall["depth"]) and torch.allclose(out["pose"], wall["pose"])
    with pytest.raises(ValueError, match=r"metric_anchor must be in \[0, 1\], got 2"):
        make(tiny_model, 1, metric_anchor=2)


def test_level_camera_keeps_heading_and_tilt_drops_roll_and_climb(tiny_model):
    """The body walks on a level floor: generated cameras keep the start height, never roll, tilt at most
    max_pitch_deg; the predicted heading is kept. Without level_camera the raymap's poses come through."""
    rgb, depth, K = first_frames(2)
    for level in (True, False):
        r = make(tiny_model, 2, seed=4, cache_max=3, level_camera=level, max_pitch_deg=20.0)
        r.reset(rgb, depth, K)
        pose = torch.cat([r.step(WALK[1:3])["pose"] for _ in range(4)], dim=1)  # (2, 16, 4, 4)
        right = pose[..., :3, 0]  # the camera's x axis in the episode frame: horizontal without roll
        is_level = bool((pose[..., 1, 3].abs() < 1e-6).all() and (right[..., 1].abs() < 1e-5).all())
        assert is_level == level
        if level:
            pitch = torch.asin(-pose[..., 1, 2]).rad2deg()
            assert (pitch.abs() <= 20.0 + 1e-3).all()
    with pytest.raises(ValueError, match=r"max_pitch_deg must be in \(0, 90\], got 0"):
        make(tiny_model, 1, max_pitch_deg=0)


def test_the_simulator_keeps_the_body_bounds():
    """The body's world is true of the simulator: along random walks, its own frames need no clamping (at
    slack 1: nothing below the floor or above the highest ceiling, nothing nearer than min_depth)."""
    from deepverse_env.sim.vector_env import DeepVerseSimVectorEnv

    config = RolloutConfig()
    sims = DeepVerseSimVectorEnv(4, height=32, width=32, frames_per_step=4)
    obs, _ = sims.reset(seed=[2000000, 2000001, 2000002, 2000003])
    actions = torch.Generator().manual_seed(0)
    floor = torch.full((4,), config.eye_height)
    for _ in range(40):
        obs, *_ = sims.step(torch.randint(9, (4,), generator=actions).numpy())
        depth, K, pose = (torch.as_tensor(obs[k]).float() for k in ("depth", "intrinsics", "pose"))
        ceiling, near = floor * (config.room_height - 1), floor * config.min_depth
        lo, hi = world_model.rollout.body_bounds(depth[..., 0], K, pose, floor, ceiling, near)
        assert (lo <= 1.0).all() and (hi >= 1.0 - 1e-5).all(), (lo, hi)
    sims.close()


def test_a_slide_keeps_the_window_in_the_body_world(tiny_model):
    """Where the anchors measure little (seen from behind, a weak metric_anchor), a window whose depth came out
    10x too far is brought back until its floor is at most body_slack eye heights below the camera, and
    one 10x too near until its nearest surfaces are min_depth away; None drops a bound."""
    rgb, depth, K = first_frames(1, seed=4)
    turn = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))  # seen from behind: no start surface in view

    def kept(factor):
        return TensorDict({
            "rgb": rgb[:, None], "depth": factor * depth[:, None], "pose": turn[None, None], "intrinsics": K[:, None],
        }, [1, 1])

    world = torch.tensor([0])
    r = make(tiny_model, 1, metric_anchor=0.1)
    r.reset(rgb, depth, K)
    far = r._anchor_to_start(world, kept(10.0))
    floor = torch.tensor([r.config.eye_height])
    slack = r.config.body_slack
    lo, hi = world_model.rollout.body_bounds(far["depth"][:, 0, ..., 0], K, turn[None], floor * slack, floor * slack, None)
    assert float(hi) == pytest.approx(1.0, rel=1e-4)  # exactly at a bound: body_slack eye heights below or above
    near = r._anchor_to_start(world, kept(0.05))
    nearest = torch.quantile(near["depth"].flatten(), 0.01)
    assert float(nearest) == pytest.approx(r.config.min_depth * 1.5, rel=1e-4)  # 0.1 eye heights
    garbage = kept(10.0)  # too deep below the floor and, at 2% of its pixels, nearer than the body allows
    garbage["depth"].view(-1)[:: 50] = 1e-3
    lo, hi = world_model.rollout.body_bounds(
        garbage["depth"][:, 0, ..., 0], K, turn[None], floor * slack, floor * slack, floor * r.config.min_depth
    )
    assert lo > hi  # the two bounds conflict: neither wins, the geometric mean of the two
    out = r._anchor_to_start(world, garbage)
    assert torch.allclose(out["depth"], garbage["depth"] * (lo * hi).sqrt(), rtol=1e-4)
    free = make(tiny_model, 1, metric_anchor=0.1, eye_height=None, room_height=None, min_depth=None)
    free.reset(rgb, depth, K)
    free.floor.zero_()  # no measured floor either
    assert torch.equal(free._anchor_to_start(world, kept(10.0))["depth"], kept(10.0)["depth"])  # nothing measures it
    for name, bad in (("eye_height", 0), ("room_height", float("nan")), ("min_depth", "1")):
        with pytest.raises(ValueError, match=f"{name} must be None or a finite number > 0, got {bad!r}"):
            make(tiny_model, 1, **{name: bad})
    with pytest.raises(ValueError, match=r"room_height must be > 1 eye height \(the ceiling above the camera\), got 1.0"):
        make(tiny_model, 1, room_height=1.0)
    with pytest.raises(ValueError, match="body_slack must be a finite number >= 1, got 0.5"):
        make(tiny_model, 1, body_slack=0.5)


def test_a_slide_carries_the_decoder_state_instead_of_decoding_the_window_again(tiny_model, monkeypatch):
    """carry_decoder (the default): a step decodes its new chunk only, slide or not; the state the next chunk
    continues from is the one its predecessor left. carry_decoder=False decodes the new window again at each
    slide to rebuild it. The two agree until the first slide."""
    codec = tiny_model.codec
    original = codec.decode_stream
    runs, calls = {}, {}
    for carry in (True, False):
        decoded = []
        monkeypatch.setattr(codec, "decode_stream", lambda z, s, _d=decoded: _d.append(z.shape[1]) or original(z, s))
        r = make(tiny_model, 2, seed=3, cache_max=3, carry_decoder=carry)  # keep 2: a slide every 2nd step from the 3rd
        r.reset(*first_frames(2))
        decoded.clear()
        runs[carry] = []
        for _ in range(6):
            runs[carry].append(r.step(WALK[:2]))
        calls[carry] = list(decoded)
    assert calls[True] == [1] * 6  # one latent frame (the new chunk) a step
    assert calls[False] == [1, 1, 1, 2, 1, 1, 2, 1]  # + the kept window (2 latent frames) at the slides of steps 3, 5
    for step in range(3):  # the chunk of step 3 is made before its slide
        torch.testing.assert_close(runs[True][step]["rgb"], runs[False][step]["rgb"], atol=0, rtol=0)
    for chunk in runs[True]:
        assert all(torch.isfinite(chunk[k].float()).all() for k in ("rgb", "depth", "pose"))
    with pytest.raises(ValueError, match="carry_decoder must be True or False, got 'yes'"):
        make(tiny_model, 1, carry_decoder="yes")


def test_micro_batches_give_the_frames_of_one_call(tiny_model):
    """micro_batch only splits the codec and refiner calls of a step into slices of worlds: the frames are those of
    one call per step (within float noise), slides included."""
    runs = {}
    for micro in (1, 2, 5):
        r = make(tiny_model, 5, seed=4, cache_max=3, micro_batch=micro)
        r.reset(*first_frames(5))
        runs[micro] = [r.step([WALK[i % 3] for i in range(5)]) for _ in range(4)]  # slides at steps 3 and 5
    for micro in (1, 2):
        for a, b in zip(runs[micro], runs[5]):
            assert (a["rgb"].int() - b["rgb"].int()).abs().max() <= 1
            torch.testing.assert_close(a["depth"], b["depth"], rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(a["pose"], b["pose"], rtol=1e-3, atol=1e-4)
    for bad in (0, 2.5, True, "4"):
        with pytest.raises(ValueError, match="micro_batch must be None or a positive integer"):
            make(tiny_model, 1, micro_batch=bad)


def test_a_model_without_depth_rolls_out_at_the_start_scale():
    """The no-depth ablation (RGB + raymap codec): frames carry no depth key, every window keeps the start frame's
    scale through its slides, memory keyframes are RGB, no 3D cache is built (its refiner is left unused), and the
    rollout stays seeded, branchable, micro-batchable; an image start takes ``completion_scale``."""
    from conftest import tiny_config
    from world_model import geometry as G
    from world_model.model import DeepVerse

    config = tiny_config(codec_overrides={"use_depth": False}, render_cache=True, refiner_overrides={"width": 8})
    model = DeepVerse(config)
    rgb, depth, K = first_frames(2)
    runs = {}
    for name, steps, config in (("a", 8, {}), ("b", 8, {}), ("other", 4, {"micro_batch": 1, "carry_decoder": False})):
        r = make(model, 2, seed=3, cache_max=3, **config)  # keep 2: slides at steps 3, 5 and 7
        first = r.reset(rgb, depth, K)
        assert r.cache is None and r.memory.state["frame"].shape[2] == 3 and "depth" not in first.keys()
        runs[name] = [r.step(WALK[:2]) for _ in range(steps)]
        for chunk in runs[name]:
            assert set(chunk.keys()) == {"rgb", "pose", "intrinsics"}
            assert all(torch.isfinite(chunk[k].float()).all() for k in chunk.keys())
        torch.testing.assert_close(r.scale, G.window_scale(depth[..., 0]))  # the start's, after the slides
        assert (r.memory.sizes() > 0).all() and (r.floor == 0).all()  # keyframes that left the windows
    for a, b in zip(runs["a"], runs["b"]):
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["pose"], b["pose"])  # same seed, same frames
    branch = r.select(torch.tensor([1, 1, 0]))
    assert "depth" not in branch.step(WALK).keys()
    snapshot = r.clone()
    r.step(WALK[:2])
    r.load(snapshot)
    assert torch.equal(r.latents, snapshot.latents)
    first = r.reset(rgb[:1], mask=torch.tensor([True, False]))  # an image start: the camera is generated
    assert "depth" not in first.keys() and first["intrinsics"][0, 0, 0] > 0
    assert r.scale[0] == r.config.completion_scale and "depth" not in r.step(WALK[:2]).keys()
