"""Pictures for people: colour maps, top-down maps, side-by-side frames, a world's map, and the envs' rgb_array
render."""
import gymnasium as gym
import numpy as np

import deepverse_env  # noqa: F401  (registers the envs)
from deepverse_env.render import PATH_STEPS, WorldMap, colorize_depth, draw_topdown, side_by_side, turbo, upscale


def test_turbo_runs_blue_to_red():
    c = turbo(np.linspace(0, 1, 11))
    assert c.shape == (11, 3) and c.min() >= 0 and c.max() <= 1
    assert c[1, 2] > 2 * c[1, 0] and c[9, 0] > 2 * c[9, 2]  # blue near 0, red near 1
    assert c[5, 1] > 0.8  # green in the middle
    assert c[0].max() < 0.3 and c[10].max() < 0.7  # dark at both ends


def test_colorize_depth_near_red_far_blue_invalid_black():
    depth = np.array([[1.0, 5.0, 9.0, np.inf, 0.0]], dtype=np.float32)
    rgb = colorize_depth(depth, vmin=1.0, vmax=9.0)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] > rgb[0, 0, 2] and rgb[0, 2, 2] > rgb[0, 2, 0]
    assert np.all(rgb[0, 3:] == 0)
    assert np.array_equal(colorize_depth(depth), rgb)  # default range: the valid min and max
    batch = colorize_depth(np.random.default_rng(0).uniform(1, 4, (2, 3, 8, 8)))
    assert batch.shape == (2, 3, 8, 8, 3)


def test_side_by_side_and_upscale():
    a = np.full((4, 3, 3), 10, np.uint8)
    b = np.full((6, 2, 3), 20, np.uint8)
    out = side_by_side(a, b, gap=1)
    assert out.shape == (6, 6, 3)
    assert np.all(out[:4, :3] == 10) and np.all(out[4:, :3] == 0) and np.all(out[:, 3] == 0) and np.all(out[:, 4:] == 20)
    assert upscale(a, 3).shape == (12, 9, 3)


def test_topdown_places_things_with_z_up():
    img = draw_topdown(
        100,
        (0.0, 10.0, 0.0, 10.0),
        rects=np.array([[1.0, 1.0, 3.0, 3.0]]),
        rect_colours=np.array([[0, 200, 0]]),
        circles=np.array([[8.0, 8.0, 0.5]]),
        circle_colours=np.array([[0, 0, 200]]),
        points=np.array([[5.0, 9.5]]),
        trajectory=np.array([[5.0, 2.0], [5.0, 5.0]]),
        heading=0.0,
    )
    assert img.shape == (100, 100, 3) and img.dtype == np.uint8

    def px(x, z):  # the map's own scale: 96 px over 10 m, centred
        return int(50 - (z - 5) * 9.6), int((x - 5) * 9.6 + 50)

    assert tuple(img[px(2, 2)]) == (0, 200, 0)  # low z is at the bottom
    assert tuple(img[px(8, 8)]) == (0, 0, 200)  # high z is at the top
    assert tuple(img[px(5, 9.5)]) == (40, 90, 220)
    assert tuple(img[px(5, 3.5)]) == (220, 40, 40)  # on the trajectory
    assert tuple(img[px(5, 5.4)]) != (235, 235, 225)  # the heading line points to +z for yaw 0


def test_env_render_rgb_array():
    env = gym.make("DeepVerseSim-v0", height=32, width=32, render_mode="rgb_array")
    env.reset(seed=0)
    for a in (1, 1, 5, 1):
        env.step(a)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[0] == 256 and frame.shape[1] == 3 * 256 + 2 * 2  # RGB | depth | map, upscaled x8
    obs = env.unwrapped._last[0]
    assert np.array_equal(frame[:256:8, :256:8], obs)  # the first panel is the observation
    assert gym.make("DeepVerseSim-v0", height=32, width=32).unwrapped.render() is None

    vec = gym.make_vec("DeepVerseSim-v0", num_envs=2, vectorization_mode="vector_entry_point", height=32, width=32, render_mode="rgb_array")
    vec.reset(seed=0)
    vec.step(np.array([1, 2]))
    frames = vec.render()
    assert len(frames) == 2 and frames[0].shape == frame.shape


def test_world_map_keeps_the_latest_path_in_bounded_memory():
    world_map = WorldMap(points=10)
    no_points = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    for t in range(PATH_STEPS + 3):
        if t == 2:
            assert world_map.positions()[:, 0].tolist() == [0, 1]
        world_map.add(*no_points, np.full(3, t, np.float32))
    path = world_map.positions()[:, 0]  # the ring wrapped: the latest PATH_STEPS positions, oldest first
    assert len(path) == PATH_STEPS and path[0] == 3 and np.all(np.diff(path) == 1)
    assert world_map.nbytes() == 10 * 15 + PATH_STEPS * 12
    copy = world_map.copy()
    world_map.clear()
    assert len(world_map.positions()) == 0 and np.array_equal(copy.positions()[:, 0], path)
