"""The motion model (M19): the body's geometry, the data it learns from, its stage, and rollouts in its cameras."""
import math

import numpy as np
import pytest
import torch

from deepverse_env.actions import PITCH_LIMIT, get_action_set
from deepverse_env.sim.agent import camera_pose
from tests.conftest import tiny_config
from world_model import body as Bd
from world_model.lit_module import MotionModule
from world_model.model import DeepVerse, DeepVerseConfig
from world_model.motion import (
    MotionConfig, MotionModel, SharedPoints, blocked_frames, chunk_errors, depth_points, nearby_points,
)
from world_model.motion_data import MotionChunks
from world_model.rollout import Rollout, RolloutConfig
from world_model.text import SENTENCES


def exact_motion_model() -> MotionModel:
    """Gains 1, residual 0 (the initialisation) and the simulator's tilt limit: the free motion is the command."""
    model = MotionModel()
    with torch.no_grad():
        model.log_tilt_limit.fill_(math.log(PITCH_LIMIT))
    return model


def test_body_states_round_trip_and_match_the_simulators_cameras():
    g = torch.Generator().manual_seed(0)
    state = torch.rand(64, 5, generator=g, dtype=torch.float64) * 2 - 1
    state[:, 3] *= math.pi
    assert torch.allclose(Bd.body_state(Bd.body_pose(state)), state, atol=1e-9)
    sim = state[:, [0, 2, 3, 4]].numpy()
    ours = Bd.body_pose(torch.stack([state[:, 0], torch.full_like(state[:, 0], -1.5), state[:, 2], state[:, 3], state[:, 4]], -1))
    assert np.allclose(ours.numpy(), camera_pose(sim, 1.5), atol=1e-9)  # the simulator's agent convention
    origin = state.flip(0)
    assert torch.allclose(Bd.absolute(Bd.relative(state, origin), origin), state, atol=1e-9)
    motion = torch.rand(64, 4, generator=g, dtype=torch.float64) * 0.2 - 0.1
    after = Bd.advance(state, motion)
    assert torch.allclose(Bd.frame_motion(torch.stack([state, after], 1))[:, 0], motion, atol=1e-9)


def test_chunks_carry_the_measured_motion_and_blocked_frames_of_the_episodes(tiny_episodes):
    import json

    chunks = MotionChunks(tiny_episodes, history=2, points=64)
    assert len(chunks) == 6 * 12  # every chunk: none filtered
    item = chunks[7]
    assert item["points"].shape == (64, 3) and item["truth"].shape == (5, 5) and item["blocked"].shape == (4,)
    assert torch.allclose(item["truth"][0, [0, 1, 2, 3]], torch.zeros(4), atol=1e-5)  # the frame of the chunk's start
    meta = json.loads((tiny_episodes / "episode_000000" / "episode.json").read_text())
    flags = torch.stack([chunks[s]["blocked"].any() for s in range(12)])
    assert flags.tolist() == meta["blocked"]  # the per-frame labels from poses agree with the simulator's flags
    full = get_action_set("full")
    assert [list(full[full.index(a)].command) for a in meta["actions"]] == meta["commands"]


def test_the_initial_motion_model_moves_by_the_command_and_stops_the_head_at_its_limit():
    model = exact_motion_model()
    forward, look_up = get_action_set("basic")[1].command, get_action_set("basic")[7].command
    command = torch.tensor([forward, look_up])
    state = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 0, PITCH_LIMIT - 0.06]], dtype=torch.float32)
    points, mask = torch.zeros(2, 4, 3), torch.zeros(2, 4, dtype=torch.bool)  # nothing seen: nothing blocks
    with torch.no_grad():
        out = model(points, mask, command, state, frames=4)
    assert torch.allclose(out["state"][0, -1], torch.tensor([0, 0, 0.32, 0, 0]), atol=1e-6)
    assert math.isclose(out["state"][1, -1, 4].item(), PITCH_LIMIT, abs_tol=1e-6)  # 2 frames up, then the limit
    assert out["blocked_logit"][1].eq(-math.inf).all()  # a command that does not move is never blocked
    with pytest.raises(ValueError, match="command and state must both be"):
        model(points, mask, command[:, :4], state, frames=4)


def test_the_motion_model_learns_walls_from_depth(tiny_episodes):
    """A few hundred steps on six tiny episodes: rotation exact, blocked frames found (it sees the walls)."""
    torch.manual_seed(0)
    chunks = MotionChunks(tiny_episodes, history=3, points=256)
    batch = torch.stack([chunks[i] for i in range(len(chunks))])
    model = MotionModel(MotionConfig(points=256))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss, logs = model.loss(batch["points"], batch["mask"], batch["command"], batch["truth"], batch["blocked"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(batch["points"], batch["mask"], batch["command"], batch["truth"][:, 0], 4)
    rot, pos = chunk_errors(out["state"], batch["truth"])
    assert rot.median() < 0.05 and pos.median() < 0.005  # degrees, metres
    assert math.degrees(model.tilt_limit.item()) > 20  # from 15, towards the 30 degrees the head reaches in the data
    pred, truth = out["blocked_logit"] > 0, batch["blocked"]
    assert truth.any() and (pred & truth).sum() >= 0.5 * truth.sum()  # most of the blocked frames found


def test_nearby_points_keep_the_nearest_seen_points_in_the_body_frame():
    depth = torch.full((1, 1, 4, 4), 2.0)
    depth[0, 0, 0, 0] = 0.0  # nothing seen there
    K = torch.tensor([[[[2.0, 0, 1.5], [0, 2.0, 1.5], [0, 0, 1]]]])
    c2w = torch.eye(4)[None, None]
    xyz, seen = depth_points(depth, K, c2w, torch.ones(1, 1, dtype=torch.bool))
    assert seen.sum() == 15
    turned = torch.tensor([[0.0, 0.0, 0.0, math.pi / 2, 0.0]])  # facing -x: the points are to its right
    points, mask = nearby_points(xyz, seen, turned, 20)
    assert mask.sum() == 15 and points.shape == (1, 16, 3)
    assert torch.allclose(points[0, mask[0], 0], torch.full((15,), 2.0))  # z-depth 2 ahead = 2 m to the right


def test_shared_points_give_each_body_exactly_the_nearest_points_of_its_world():
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(2, 3000, 3, generator=g) * 4  # two worlds
    seen = torch.rand(2, 3000, generator=g) < 0.7
    seen[1, 40:] = False  # world 1 has seen fewer points than most
    centre = torch.zeros(2, 5)
    shared = SharedPoints(xyz, seen, centre, n=16)
    assert [keep for keep, _ in shared.levels] == [32, 128, 512, 2048, shared.xyz.shape[1]]
    world = torch.tensor([0, 0, 0, 0, 1, 1])
    state = torch.zeros(6, 5)
    state[:, 0] = torch.tensor([0.0, 0.3, 2.0, 9.0, 0.5, 6.0])  # near the centre, out of the first levels, out of all
    state[:, 3] = torch.tensor([0.0, 1.0, -2.0, 0.5, 3.0, 0.0])  # headings
    points, mask = shared.nearby(state, world)
    want, want_mask = nearby_points(xyz[world], seen[world], state, 16)
    assert torch.equal(mask.sum(1), want_mask.sum(1)) and want_mask[4:].sum() == 2 * 16

    def as_set(p, m):  # rows sorted by their first coordinate: the same points in any order
        p = torch.where(m[..., None], p, math.inf)
        return p.gather(1, p[..., :1].argsort(1).expand(-1, -1, 3))

    assert torch.allclose(as_set(points, mask), as_set(want, want_mask))


def test_config_and_module_refuse_bad_settings(tmp_path):
    for bad, match in (({"points": 0}, "points must be a positive integer"), ({"neighbours": 600, "points": 512}, "cannot exceed"),
                       ({"history": -1}, "history must be an integer >= 0")):
        with pytest.raises(ValueError, match=match):
            MotionConfig(**bad)
    with pytest.raises(ValueError, match="unknown MotionConfig field 'size'"):
        DeepVerseConfig(motion=True, motion_overrides={"size": 3})
    with pytest.raises(ValueError, match="motion must be true or false"):
        DeepVerseConfig(motion="yes")
    with pytest.raises(ValueError, match="set model.motion: true"):
        MotionModule(model=tiny_config())
    plain = DeepVerse(tiny_config()).save_pretrained(tmp_path / "plain")
    module = MotionModule(model=tiny_config(motion=True), init_weights=str(plain))
    assert torch.equal(module.model.dit.final.linear.weight, DeepVerse.from_pretrained(plain).dit.final.linear.weight)
    with pytest.raises(ValueError, match="another config than model"):
        MotionModule(model=tiny_config(motion=True, use_memory=False), init_weights=str(plain))


def test_the_stage_trains_only_the_motion_model_and_exports_with_it(tiny_episodes, tmp_path):
    module = MotionModule(model=tiny_config(motion=True, motion_overrides={"points": 128, "history": 2}))
    batch = torch.stack([MotionChunks(tiny_episodes, history=2, points=128)[i] for i in range(8)])
    loss, _ = module.stage_loss(module.model, batch)
    loss.backward()
    assert all(p.grad is not None for p in module.model.motion.parameters())
    assert all(p.grad is None for n, p in module.model.named_parameters() if not n.startswith("motion."))
    model = module.model
    with torch.no_grad():
        model.motion.gain.mul_(1.5)
    loaded = DeepVerse.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert loaded.config.motion and torch.equal(loaded.motion.gain, model.motion.gain)


# ---- rollouts in the motion model's cameras ----------------------------------------------------------


def motion_world(B=2, **config):
    from tests.test_rollout import first_frames

    model = DeepVerse(tiny_config(motion=True, motion_overrides={"points": 128, "neighbours": 16}))
    with torch.no_grad():
        model.motion.log_tilt_limit.fill_(math.log(PITCH_LIMIT))
    r = Rollout(model, B, RolloutConfig(**config), generator=torch.Generator().manual_seed(0))
    r.reset(*first_frames(B))
    return r


def test_a_rollout_takes_the_motion_models_cameras_and_generates_for_them():
    r = motion_world()
    assert r.camera == "motion"
    basic = get_action_set("basic")
    commands = torch.tensor([basic[5].command, basic[1].command])  # turn left; forward
    poses, blocked, said = r.plan(commands)
    chunk = r.step(commands=commands)
    assert torch.allclose(chunk["pose"], poses) and torch.equal(chunk["blocked"], blocked)
    assert r.sentences == said and said[0] == "The camera stays in place, turning left."
    heading = Bd.body_state(chunk["pose"][0, -1])
    assert math.isclose(float(heading[3]), 4 * basic[5].yaw, abs_tol=1e-5)
    # The stored latent's raymap is the motion model's keyframe camera: the window decodes to it.
    K, c2w = r.model.codec.decode_cameras(r.latents[:, :2])
    window = torch.linalg.inv(r.anchor)[:, None] @ chunk["pose"][:, -1:]
    assert torch.allclose(c2w[:, -1, :3, :3], window[:, 0, :3, :3], atol=2e-3)
    for _ in range(6):  # through a slide: the body stays level, at its height, and keeps its heading
        chunk = r.step(commands=commands)
    assert torch.allclose(chunk["pose"][:, :, 1, 3], torch.zeros(2, 4), atol=1e-5)
    assert math.isclose(float(Bd.body_state(chunk["pose"][0, -1])[3]), Bd.wrap(torch.tensor(28 * basic[5].yaw)).item(), abs_tol=1e-4)


def test_motion_rollouts_refuse_the_wrong_action_and_change_nothing():
    r = motion_world()
    before = r.latents.clone(), r.length.clone(), r.generator.get_state()
    with pytest.raises(ValueError, match="pass commands="):
        r.step([SENTENCES[0]] * 2)
    with pytest.raises(ValueError, match=r"finite \(2, 5\) tensor"):
        r.step(commands=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"finite \(2, 5\) tensor"):
        r.step(commands=torch.full((2, 5), float("nan")))
    assert torch.equal(r.latents, before[0]) and torch.equal(r.length, before[1]) and torch.equal(r.generator.get_state(), before[2])
    with pytest.raises(ValueError, match="camera 'motion' needs a model with a motion model"):
        Rollout(DeepVerse(tiny_config()), 1, RolloutConfig(camera="motion"))
    with pytest.raises(ValueError, match="camera must be one of"):
        Rollout(DeepVerse(tiny_config()), 1, RolloutConfig(camera="raymap"))
    with pytest.raises(ValueError, match="caption_thresholds must be None or a dict"):
        Rollout(DeepVerse(tiny_config()), 1, RolloutConfig(caption_thresholds={"move_threshold": 0.1}))
    generated = motion_world(camera="generated")  # the paper's raymap path on the same weights
    with pytest.raises(ValueError, match="pass sentences, not commands"):
        generated.step(commands=torch.zeros(2, 5))
    assert "blocked" not in generated.step([SENTENCES[0]] * 2).keys()


def test_the_learned_env_moves_by_the_motion_model(tmp_path):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import deepverse_env  # noqa: F401

    model = DeepVerse(tiny_config(motion=True, motion_overrides={"points": 128, "neighbours": 16}))
    env = gym.make("DeepVerse-v0", checkpoint=model, memory_capacity=8, map_points=500)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    turn = env.unwrapped.actions.index("turn_left")
    obs, _, _, _, info = env.step(turn)
    assert info["sentence"] == "The camera stays in place, turning left." and info["blocked"] is False
    assert math.isclose(float(Bd.body_state(torch.from_numpy(obs["pose"]))[3]), math.radians(12), abs_tol=1e-4)
    a, b = gym.make("DeepVerse-v0", checkpoint=model), gym.make("DeepVerse-v0", checkpoint=model)
    a.reset(seed=3), b.reset(seed=3)
    for k in (1, 5, 2):
        x, y = a.step(k)[0], b.step(k)[0]
        assert all(np.array_equal(x[key], y[key]) for key in x)  # same seed, same frames
    from deepverse_env.learned.vector_env import DeepVerseVectorEnv

    vec = DeepVerseVectorEnv(2, checkpoint=model, max_episode_steps=1)
    vec.reset(seed=0)
    for _ in range(2):  # the second step restarts both worlds: nothing moved, nothing blocked
        *_, info = vec.step(np.array([turn, turn]))
        assert info["blocked"].dtype == bool and info["blocked"].shape == (2,) and not info["blocked"].any()
    text = gym.make("DeepVerse-v0", checkpoint=model, text_actions=True)
    text.reset(seed=0)
    obs, *_ = text.step("The camera stays in place, turning right.")
    assert math.isclose(float(Bd.body_state(torch.from_numpy(obs["pose"]))[3]), -math.radians(12), abs_tol=1e-4)


def test_blocked_frames_need_a_commanded_move():
    truth = torch.zeros(2, 3, 5)
    truth[1, 1:, 2] = 0.08  # moved in the first frame, then stopped
    command = torch.tensor([[0.0, 0, 0, 0.05, 0], [0, 0, 0.08, 0, 0]])
    assert blocked_frames(truth, command).tolist() == [[False, False], [False, True]]


def test_pose_only_imagination_rolls_the_motion_model_alone_and_changes_nothing():
    import gymnasium as gym

    import deepverse_env  # noqa: F401

    r = motion_world()
    basic = get_action_set("basic")
    turn, forward = basic[5].command, basic[1].command
    commands = torch.tensor([[turn, turn, forward], [forward, forward, forward]]).float()  # (M, L, 5)
    before = r.latents.clone(), r.generator.get_state()
    out = r.imagine_poses(torch.tensor([0, 0]), commands)
    assert out.shape == (2, 3) and torch.equal(r.latents, before[0]) and torch.equal(r.generator.get_state(), before[1])
    assert torch.allclose(out["pose"][0, 0], r.plan(commands[[0, 1], 0])[0][0, -1], atol=1e-6)  # step 1 = plan's
    assert math.isclose(Bd.body_state(out["pose"][0, 1])[3].item(), 8 * basic[5].yaw, abs_tol=1e-5)
    with pytest.raises(ValueError, match=r"finite \(2, L, 5\) tensor"):
        r.imagine_poses(torch.tensor([0, 1]), commands[..., :4])
    model = DeepVerse(tiny_config(motion=True, motion_overrides={"points": 128, "neighbours": 16}))
    env = gym.make("DeepVerse-v0", checkpoint=model, reward="goal")
    env.reset(seed=0)
    seqs = np.array([[1, 1, 5], [5, 5, 5]])
    imagined = env.unwrapped.imagine(seqs, pixels=False)
    assert set(imagined.keys()) >= {"pose", "blocked", "reward", "terminated"} and "rgb" not in imagined.keys()
    sim = gym.make("DeepVerseSim-v0", height=16, width=16, reward="goal")
    sim.reset(seed=0)
    fast, full = sim.unwrapped.imagine(seqs, pixels=False), sim.unwrapped.imagine(seqs)
    assert torch.allclose(fast["pose"], full["pose"]) and torch.allclose(fast["reward"], full["reward"])
    with pytest.raises(ValueError, match="pixels must be True or False"):
        sim.unwrapped.imagine(seqs, pixels="no")
    generated = gym.make("DeepVerse-v0", checkpoint=model, camera="generated")
    generated.reset(seed=0)
    with pytest.raises(ValueError, match="this world has none"):
        generated.unwrapped.imagine(seqs, pixels=False)
    depth_hook = gym.make("DeepVerse-v0", checkpoint=model, reward="collision")
    depth_hook.reset(seed=0)
    with pytest.raises(ValueError, match="pose-only imagination"):
        depth_hook.unwrapped.imagine(seqs, pixels=False)
