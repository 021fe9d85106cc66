"""The grounded world (M18): the 3D cache, the render-conditioned refiner, the rollout that uses both, and
the refiner's training stage."""
import pytest
import torch
from tensordict import TensorDict

from conftest import perturb_zero_init, tiny_config
from test_rollout import WALK, first_frames, make
from world_model.cache import CacheConfig, PointCache
from world_model.episodes import ClipConfig, EpisodeClips
from world_model.lit_module import RefinerModule, true_frames
from world_model.model import DeepVerse
from world_model.refine import IN_CHANNELS, Refiner, RefinerConfig, RenderNoise, cache_renders, perturb_poses, refiner_inputs


def grounded_model(**changes) -> DeepVerse:
    model = DeepVerse(tiny_config(render_cache=True, sampler={"steps": 1}, **changes)).eval()
    perturb_zero_init(model)  # the refiner's zero last layer would make it the identity
    return model


def start(B: int) -> TensorDict:
    rgb, depth, K = first_frames(B)
    return TensorDict({"rgb": rgb, "depth": depth, "pose": torch.eye(4).repeat(B, 1, 1), "intrinsics": K}, [B])


def test_cache_renders_a_stored_frame_back_into_its_own_camera_and_stays_bounded():
    frames = start(2)
    cache = PointCache(CacheConfig(frames=2), 2, 16, 16)
    cache.add(frames[1:], torch.tensor([1]))  # world 1 only
    r = cache.render(torch.tensor([0, 1]), frames["intrinsics"][:, None], frames["pose"][:, None])
    assert not r.mask[0].any() and r.mask[1].all()  # world 0 holds nothing
    assert torch.equal(r.values[1].to(torch.uint8), frames["rgb"][1])
    for _ in range(3):  # a ring: never more than its frames
        cache.add(frames, torch.tensor([0, 1]))
    assert cache.sizes().tolist() == [2, 2] and cache.nbytes() == 2 * 2 * 256 * 15 + 2 * 2 * 10
    picked = cache.select(torch.tensor([1, 1]))
    cache.reset(torch.tensor([False, True]))
    assert cache.sizes().tolist() == [2, 0] and picked.sizes().tolist() == [2, 2]
    cache.load_state(picked)
    assert cache.sizes().tolist() == [2, 2]
    with pytest.raises(ValueError, match="frames must be an integer >= 2"):
        CacheConfig(frames=1)
    with pytest.raises(ValueError, match=r"real_priority must be in \[0, 1\)"):
        CacheConfig(real_priority=1.0)


def test_the_real_start_frame_is_kept_and_wins_near_ties():
    frames = start(1)
    cache = PointCache(CacheConfig(frames=2, real_priority=0.05), 1, 16, 16)
    cache.add(frames, torch.tensor([0]), real=True)
    nearer = frames.clone()
    nearer["depth"] = frames["depth"] * 0.97  # a generated surface 3% nearer, in other colours
    nearer["rgb"] = 255 - frames["rgb"]
    for _ in range(3):
        cache.add(nearer, torch.tensor([0]))
    assert cache.state["real"][0].tolist().count(True) == 1 and cache.sizes().tolist() == [2]
    r = cache.render(torch.tensor([0]), frames["intrinsics"][:, None], frames["pose"][:, None])
    assert torch.equal(r.values[0].to(torch.uint8), frames["rgb"][0])  # the real picture shows
    torch.testing.assert_close(r.depth[0], frames["depth"][0, ..., 0])  # at its own depth
    much_nearer = nearer.clone()
    much_nearer["depth"] = frames["depth"] * 0.8
    cache.add(much_nearer, torch.tensor([0]))
    r = cache.render(torch.tensor([0]), frames["intrinsics"][:, None], frames["pose"][:, None])
    assert torch.equal(r.values[0].to(torch.uint8), much_nearer["rgb"][0])  # a clearly nearer surface occludes it


def test_untrained_refiner_keeps_holes_and_blends_the_render_and_shapes_are_checked():
    refiner = Refiner(RefinerConfig(width=8, levels=2))
    x = torch.randn(3, IN_CHANNELS, 16, 16)
    x[:, 8] = (torch.rand(3, 16, 16) < 0.5).float()  # the render mask
    out = refiner(x)
    hole = x[:, 8:9].expand(3, 3, 16, 16) == 0
    assert torch.equal(out[hole], x[:, :3][hole])  # holes: the decoded frame
    torch.testing.assert_close(out[~hole], ((x[:, :3] + x[:, 4:7]) / 2)[~hole])  # covered: half the render
    with pytest.raises(ValueError, match=r"refiner inputs must be \(N, 9, H, W\) with H, W divisible by 4"):
        refiner(torch.randn(1, IN_CHANNELS, 18, 16))
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        RefinerConfig(levels=0)
    frames = start(2)
    inputs = refiner_inputs(
        frames["rgb"], frames["depth"][..., 0], frames["rgb"], frames["depth"][..., 0], torch.ones(2, 16, 16, dtype=torch.bool),
        torch.ones(2),
    )
    assert inputs.shape == (2, IN_CHANNELS, 16, 16) and torch.equal(inputs[:, :3], inputs[:, 4:7])


def test_pose_noise_has_the_asked_size():
    c2w = torch.eye(4).repeat(2000, 1, 1)
    moved = perturb_poses(c2w, 2.0, torch.full((2000,), 0.1), torch.Generator().manual_seed(0))
    angle = torch.rad2deg(torch.arccos(((moved[:, :3, :3].diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert 1.4 < angle.mean() < 1.8  # E|N(0, 2)| = 1.6 degrees
    assert 0.1 < moved[:, :3, 3].norm(dim=-1).mean() < 0.2  # E|N(0, 0.1 I_3)| = 0.16


def test_clean_cache_renders_reproduce_the_target_where_covisible(tiny_episodes):
    clips = EpisodeClips(tiny_episodes, ClipConfig(chunks=2))
    batch = EpisodeClips.collate([clips[0], clips[1]])
    truth = true_frames(batch)
    clean = RenderNoise(rotation_deg=0.0, translation=0.0, depth=0.0, blur=0.0)
    r = cache_renders(truth, torch.tensor([4]), torch.tensor([4]), batch["scale"], clean)  # a frame into itself
    assert r.mask.all() and torch.equal(r.values.to(torch.uint8), truth["rgb"][:, 4])
    noisy = cache_renders(truth, torch.tensor([5, 6]), torch.tensor([0, 4]), batch["scale"], RenderNoise(), torch.Generator().manual_seed(0))
    assert noisy.values.shape == (4, 16, 16, 3) and 0.3 < noisy.mask.float().mean() <= 1
    # clean = 1: every clip's cache is exact, whatever the other noise levels say.
    exact = cache_renders(truth, torch.tensor([5, 6]), torch.tensor([0, 4]), batch["scale"], clean)
    forced = cache_renders(
        truth, torch.tensor([5, 6]), torch.tensor([0, 4]), batch["scale"], RenderNoise(clean=1.0), torch.Generator().manual_seed(0)
    )
    assert torch.equal(forced.values, exact.values) and torch.equal(forced.mask, exact.mask)


@pytest.mark.parametrize("field, value", [("clean", 1.5), ("blur", -0.1), ("depth", -1.0), ("rotation_deg", float("nan"))])
def test_render_noise_rejects_bad_levels(field, value):
    with pytest.raises(ValueError, match=field):
        RenderNoise(**{field: value})


def test_grounded_rollout_refines_with_the_cache_and_branches():
    model = grounded_model()
    r = make(model, 2, cache_max=3, cache=CacheConfig(frames=3))
    first = r.reset(*first_frames(2))
    assert r.cache.sizes().tolist() == [1, 1]
    plain = make(model, 2, cache_max=3, render_cache=False)  # the paper's path: same weights, no refiner
    plain.reset(*first_frames(2))
    assert plain.cache is None and r.nbytes() == plain.nbytes() + r.cache.nbytes()
    branch = r.clone()
    for _ in range(4):  # windows slide; the cache stays at its bound
        chunk = r.step(WALK[:2])
        assert chunk["rgb"].dtype == torch.uint8 and torch.isfinite(chunk["depth"]).all()
    assert r.cache.sizes().tolist() == [3, 3]
    assert branch.cache.sizes().tolist() == [1, 1]  # the clone kept its own cache
    r.load(branch)
    assert r.cache.sizes().tolist() == [1, 1] and first["rgb"].shape == (2, 16, 16, 3)
    # The refiner changed the decoded colours: the paper path with the same noise differs.
    g1, g2 = make(model, 1, seed=3), make(model, 1, seed=3, render_cache=False)
    g1.reset(*first_frames(1))
    g2.reset(*first_frames(1))
    x, y = g1.step(WALK[:1]), g2.step(WALK[:1])
    assert torch.equal(x["depth"], y["depth"]) and not torch.equal(x["rgb"], y["rgb"])


def test_refiner_stage_trains_only_the_refiner(tiny_episodes, tmp_path):
    module = RefinerModule(model=tiny_config(render_cache=True, refiner_overrides={"width": 8}))
    clips = EpisodeClips(tiny_episodes, ClipConfig(chunks=2))
    batch = EpisodeClips.collate([clips[i] for i in range(3)])
    loss, logs = module.stage_loss(module.model, batch)
    loss.backward()
    assert torch.isfinite(loss) and 0 < logs["render_cover"] <= 1
    assert all(p.grad is not None for p in module.model.refiner.parameters())
    assert all(p.grad is None for n, p in module.model.named_parameters() if not n.startswith("refiner."))
    metrics = module.evaluate(module.model, batch)
    assert {"refine/psnr", "refine/sharpness", "refine/psnr_decoded", "refine/render_cover"} <= set(metrics)
    with pytest.raises(ValueError, match="set model.render_cache: true"):
        RefinerModule(model=tiny_config())
    for bad in ({"latent_noise": -0.1}, {"grad_weight": float("nan")}, {"edge_weight": -1.0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be >= 0"):
            RefinerModule(model=tiny_config(render_cache=True), **bad)
    with pytest.raises(ValueError, match="init_weights .*nowhere does not exist"):
        RefinerModule(model=tiny_config(render_cache=True), init_weights=str(tmp_path / "nowhere"))
    plain = DeepVerse(tiny_config()).save_pretrained(tmp_path / "plain")
    loaded = RefinerModule(model=tiny_config(render_cache=True), init_weights=str(plain))
    assert torch.equal(loaded.model.dit.final.linear.weight, DeepVerse.from_pretrained(plain).dit.final.linear.weight)
    with pytest.raises(ValueError, match="another config than model: .*'use_memory'"):
        RefinerModule(model=tiny_config(render_cache=True, use_memory=False), init_weights=str(plain))


def test_the_learned_env_carries_the_cache_through_snapshots_and_imagination():
    """DeepVerse-v0 on a grounded model: check_env, same seed same frames, get_state / imagine leave it as it
    was, and ``render_cache=False`` is the paper path on the same weights."""
    import gymnasium as gym
    import numpy as np
    from gymnasium.utils.env_checker import check_env

    model = grounded_model()
    env = gym.make("DeepVerse-v0", checkpoint=model, max_episode_steps=None)
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=4)
    state = env.unwrapped.get_state()
    futures = env.unwrapped.imagine(np.array([[1, 5], [2, 6]]), seed=0)
    first = [env.step(a)[0]["rgb"] for a in (1, 5)]
    env.unwrapped.set_state(state)
    again = [env.step(a)[0]["rgb"] for a in (1, 5)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and futures["rgb"].shape[:2] == (2, 2)
    assert env.unwrapped.world.rollout.cache.sizes().tolist() == [3]
    paper = gym.make("DeepVerse-v0", checkpoint=model, render_cache=False)
    paper.reset(seed=4)
    assert paper.unwrapped.world.rollout.cache is None
    assert not np.array_equal(paper.step(1)[0]["rgb"], first[0])


def test_a_render_frame_model_generates_each_chunk_in_two_passes(monkeypatch):
    """With the cache, a first pass without a render gives the keyframe camera the cache is rendered into and a
    second pass with that render gives the chunk; same seed, same frames; without the cache, one pass."""
    model = DeepVerse(tiny_config(dit_overrides={"render_frame": True}, sampler={"steps": 1})).eval()
    perturb_zero_init(model)
    assert model.refiner is None
    renders = []  # per next_latent call: the render passed, or None
    original = model.next_latent

    def next_latent(*args, **kwargs):
        renders.append(args[4] if len(args) > 4 else kwargs.get("render"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "next_latent", next_latent)
    r, again = make(model, 2, seed=3, cache_max=3), make(model, 2, seed=3, cache_max=3)
    r.reset(*first_frames(2)), again.reset(*first_frames(2))
    assert r.cache.sizes().tolist() == [1, 1]
    for i in range(4):  # windows slide
        renders.clear()
        chunk = r.step(WALK[:2])
        assert len(renders) == 2 and renders[0] is None and renders[1].shape == (2, 1, *r.latents.shape[2:])
        assert torch.equal(chunk["rgb"], again.step(WALK[:2])["rgb"]) and torch.isfinite(chunk["depth"]).all()
    assert r.cache.sizes().tolist() == [5, 5]  # the start frame and each chunk's keyframe

    def fail(chunk):
        raise RuntimeError("rejected")

    with pytest.raises(RuntimeError, match="rejected"):
        r.step(WALK[:2], before_commit=fail)  # all or nothing: both passes' noise and the cache roll back
    assert torch.equal(r.step(WALK[:2])["rgb"], again.step(WALK[:2])["rgb"])
    plain = make(model, 2, seed=3, cache_max=3, render_cache=False)
    plain.reset(*first_frames(2))
    renders.clear()
    plain.step(WALK[:2])
    assert plain.cache is None and renders == [None]
