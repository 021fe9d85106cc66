"""The motion model (M19): how the camera moves under an action, learned from recorded episodes.

Input per world: the pressed action as its per-frame *command* ``(x, y, z, yaw, pitch)`` (body-frame metres and
radians per frame, ``deepverse_env.actions.Action.command``: one model serves every action set, text included), the
camera's body state now (``world_model.body``: position, heading, tilt) and what the world has shown around it: a few
depth frames with their intrinsics and poses (the last frame and keyframes before it). Output per frame of the
chunk: the body's motion ``(dx, dz, dyaw, dpitch)`` and the probability that the frame's move was blocked.

What is built in is the body (``world_model.body``): it stays on the floor and turns, tilts, then moves along its
new heading. What is learned, from the measured poses and blocked frames of episodes:

- the *free motion* of a command at a tilt: a gain per axis, the head's tilt limit, and a residual network of the
  command and the tilt (zero at the start of training) for whatever else a world does with a command;
- *blocked*: a point network over the ``neighbours`` points seen nearest to where the move would take the body
  (each point's offset in the new heading's frame, its height, its distance, and the move), max-pooled and
  classified. Points of the floor and the ceiling (the body's prior: ``eye_height``, ``floor_margin``, ``headroom``)
  are not candidates, and where no point is left nothing blocks. A blocked frame's translation is not applied (the turn is), as the recorded worlds do.

Points come from every given depth frame, unprojected and moved into the level frame of the current body
(``nearby_points``): the ``points`` nearest to the body on the floor plan are kept. Rollouts hand it the window's
decoded frames and the 3D cache; pose-only imagination the same, shared by its candidates (``SharedPoints``).

    model = MotionModel(MotionConfig())
    points, mask = nearby_points(*depth_points(depth, K, c2w, valid), state, model.config.points)  # (B, N, 3), (B, N)
    out = model(points, mask, command, state, frames=4)        # motion (B, 4, 4), blocked (B, 4), state (B, 5, 5)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model import body as Bd
from world_model import geometry as G

COMMAND = ("x", "y", "z", "yaw", "pitch")  # the last axis of a command
COMMAND_SCALE = (0.1, 0.1, 0.1, 0.05, 0.05)  # typical magnitudes (metres, radians per frame): inputs near unit size
MOVE_EPS = 1e-6  # a command with less horizontal translation than this (metres) moves nothing, and is never blocked


@dataclass
class MotionConfig:
    points: int = 1024  # points seen nearest to the body that the model keeps
    neighbours: int = 64  # points nearest to a move's end that decide whether it is blocked
    eye_height: float = 1.5  # the body's prior (metres): the camera this far above the floor ...
    floor_margin: float = 0.15  # ... points less than this above the floor are floor, not obstacles (they crowded the
                                # walls out of the neighbours: forward recall 0.74 -> 0.87, 400 steps, val episodes)
    headroom: float = 1.0  # ... and points more than this above the camera are ceiling
    hidden: int = 64  # width of both networks
    history: int = 5  # keyframes before the last frame whose depth the rollout also hands in (a window holds 6)
    init_tilt_limit_deg: float = 15.0  # start of the learned tilt limit (learned from frames that reach it)

    def __post_init__(self):
        for name in ("points", "neighbours", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MotionConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 0:
            raise ValueError(f"MotionConfig.history must be an integer >= 0, got {self.history!r}")
        if self.neighbours > self.points:
            raise ValueError(f"MotionConfig.neighbours ({self.neighbours}) cannot exceed points ({self.points})")
        for name in ("eye_height", "floor_margin", "headroom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"MotionConfig.{name} must be a finite number > 0, got {value!r}")
        if self.floor_margin >= self.eye_height:
            raise ValueError(f"MotionConfig.floor_margin ({self.floor_margin}) must be below eye_height ({self.eye_height})")
        if not 0 < self.init_tilt_limit_deg < 90:
            raise ValueError(f"MotionConfig.init_tilt_limit_deg must be in (0, 90), got {self.init_tilt_limit_deg!r}")


def _floor_distance(xyz: Tensor, seen: Tensor, bodies: Tensor) -> Tensor:
    """Squared floor-plan distances (m, P) of points ``xyz`` (m | 1, P, 3) from bodies (m, 5); inf where not ``seen``."""
    x, z = xyz[..., 0].float(), xyz[..., 2].float()  # (m | 1, P) each: two planes, no (m, P, 2) temporaries
    return torch.where(seen, (x - bodies[:, 0, None]).square() + (z - bodies[:, 2, None]).square(), math.inf)


def nearby_points(xyz: Tensor, seen: Tensor, state: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The ``n`` of world points ``xyz`` (B, P, 3) where ``seen`` (B, P) nearest to a body (B, 5) on the floor plan,
    in its level frame (x right, y down from the camera, z forward): points (B, n, 3), mask (B, n) bool.
    The floor-plan distance needs no rotation: only the ``n`` chosen points are turned into the body frame."""
    state = state.float()
    near, idx = _floor_distance(xyz, seen, state).topk(min(n, xyz.shape[1]), dim=1, largest=False)  # (B, n) each
    chosen = xyz.gather(1, idx[..., None].expand(-1, -1, 3)).float()  # (B, n, 3)
    return Bd.to_body(chosen, state), near.isfinite()


class SharedPoints:
    """The seen points of U worlds read by many bodies each (pose-only imagination): ``nearby(state, world)`` is
    ``nearby_points`` of body b against the points of world ``world[b]``, without a copy of them per body.

    Unseen points are dropped once, here, and each world's seen points are ranked once by their distance from a
    centre (the bodies' start). Level k keeps the ``n * 4**k`` nearest of them: the distance ``radius`` of the last one
    kept bounds every point left out, so a body ``r`` from the centre whose ``n``-th nearest kept point lies within
    ``radius - r`` has exactly the ``n`` nearest points of all (ties aside). Each body is ranked against the smallest
    level that proves this, and the bodies that walk out of every level against all of their world's seen points.

        shared = SharedPoints(xyz, seen, centre, n=1024)  # xyz (U, P, 3), seen (U, P), centre (U, 5)
        points, mask = shared.nearby(state, world)        # state (B, 5), world (B,) -> (B, n, 3), (B, n)
    """

    def __init__(self, xyz: Tensor, seen: Tensor, centre: Tensor, n: int):
        centre = centre.float()
        count = seen.sum(1)  # (U,)
        size = max(int(count.max()), 1)  # every seen point of the world that has most
        near, idx = _floor_distance(xyz, seen, centre).topk(size, dim=1, largest=False)  # (U, size) nearest first
        self.xyz = xyz.gather(1, idx[..., None].expand(-1, -1, 3)).float()  # (U, size, 3)
        self.seen = near.isfinite()  # (U, size)
        self.n = min(n, size)
        self.centre = centre[:, [0, 2]]  # (U, 2)
        self.levels = []  # (points kept, radius (U,)): the first `keep` points of every world
        keep = 2 * self.n
        while keep < size:
            self.levels.append((keep, torch.where(count > keep, near[:, keep - 1].sqrt(), math.inf)))
            keep *= 4
        self.levels.append((size, torch.full_like(centre[:, 0], math.inf)))

    def nearby(self, state: Tensor, world: Tensor) -> tuple[Tensor, Tensor]:
        """``nearby_points`` of bodies ``state`` (B, 5) in worlds ``world`` (B,): points (B, n, 3), mask (B, n)."""
        state = state.float()
        near = torch.empty(len(state), self.n, device=state.device)
        chosen = torch.empty(len(state), self.n, 3, device=state.device)
        out = (state[:, [0, 2]] - self.centre[world]).norm(dim=-1)  # (B,) how far each body is from its centre
        left = torch.ones(len(state), dtype=torch.bool, device=state.device)  # bodies not yet ranked
        for keep, radius in self.levels:
            xyz, seen = self.xyz[:, :keep], self.seen[:, :keep]
            for u in world[left].unique().tolist():  # the bodies of world u against its first `keep` points
                bodies = (left & (world == u)).nonzero()[:, 0]
                d, idx = _floor_distance(xyz[u, None], seen[u, None], state[bodies]).topk(
                    self.n, dim=1, largest=False, sorted=False)  # a set: the motion model ranks its own
                proven = d.amax(1).sqrt() <= radius[u] - out[bodies]  # no point left out can be nearer
                done = bodies[proven]
                near[done], chosen[done] = d[proven], xyz[u, idx[proven]]
                left[done] = False
            if not left.any():
                break
        return Bd.to_body(chosen, state), near.isfinite()


def depth_points(depth: Tensor, K: Tensor, c2w: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """World points (B, F * H * W, 3) of depth frames and where they were seen (B, F * H * W).

    depth: (B, F, H, W) z-depth in metres (<= 0 or non-finite: nothing seen).  K: (B, F, 3, 3).  c2w: (B, F, 4, 4).
    valid: (B, F) bool, the frames to use.
    """
    xyz = G.unproject(depth.float().clamp_min(1e-6), K.float(), c2w.float()).flatten(2, 3)  # (B, F, HW, 3)
    seen = (depth > 0).flatten(2) & depth.isfinite().flatten(2) & valid[..., None]  # (B, F, HW)
    return xyz.flatten(1, 2), seen.flatten(1)


class MotionModel(nn.Module):
    """Per frame: the body's free motion under a command, and whether the move is blocked (module docstring)."""

    def __init__(self, config: MotionConfig | None = None):
        super().__init__()
        self.config = c = config or MotionConfig()
        self.register_buffer("command_scale", torch.tensor(COMMAND_SCALE), persistent=False)
        self.gain = nn.Parameter(torch.ones(4))  # (dx, dz, dyaw, dpitch) per unit of command (x, z, yaw, pitch)
        self.log_tilt_limit = nn.Parameter(torch.tensor(math.log(math.radians(c.init_tilt_limit_deg))))
        self.residual = nn.Sequential(nn.Linear(6, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, 4))
        nn.init.zeros_(self.residual[-1].weight)
        nn.init.zeros_(self.residual[-1].bias)
        self.point_net = nn.Sequential(nn.Linear(6, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.classify = nn.Sequential(nn.Linear(c.hidden + 2, c.hidden), nn.SiLU(), nn.Linear(c.hidden, 1))

    @property
    def tilt_limit(self) -> Tensor:
        """The learned limit of the head's tilt (radians, both ways)."""
        return self.log_tilt_limit.exp()

    def free_motion(self, command: Tensor, tilt: Tensor) -> Tensor:
        """The motion (B, 4) of one frame of ``command`` (B, 5) from ``tilt`` (B,) when nothing blocks it."""
        c = command / self.command_scale
        base = self.gain * command[:, [0, 2, 3, 4]]
        motion = base + 0.01 * self.residual(torch.cat([c, tilt[:, None]], -1))
        limit = self.tilt_limit
        pitch = torch.minimum(torch.maximum(tilt + motion[:, 3], -limit), limit)  # the head stops at its limit
        return torch.cat([motion[:, :3], (pitch - tilt)[:, None]], -1)

    def blocked_logit(self, points: Tensor, mask: Tensor, state: Tensor, motion: Tensor) -> Tensor:
        """Logits (B,) that ``motion`` (B, 4) from body ``state`` (B, 5) (both in the points' frame) is blocked.
        points (B, N, 3), mask (B, N)."""
        yaw = Bd.wrap(state[:, 3] + motion[:, 2])
        right, forward = Bd.heading(yaw)  # (B, 2)
        end = state[:, [0, 2]] + motion[:, :1] * right + motion[:, 1:2] * forward  # (B, 2) where the move ends
        dx, dz = points[..., 0] - end[:, :1], points[..., 2] - end[:, 1:]  # (B, N) each
        rel = torch.stack([dx * right[:, :1] + dz * right[:, 1:], dx * forward[:, :1] + dz * forward[:, 1:]], -1)  # (B, N, 2) new heading's frame
        c = self.config
        body = (points[..., 1] < c.eye_height - c.floor_margin) & (points[..., 1] > -c.headroom)  # not floor or ceiling
        dist = torch.where(mask & body, rel.norm(dim=-1), math.inf)
        k = min(self.config.neighbours, dist.shape[1])
        near, idx = dist.topk(k, dim=1, largest=False)  # (B, k)
        rel = rel.gather(1, idx[..., None].expand(-1, -1, 2))
        height = points[..., 1].gather(1, idx)
        move = motion[:, :2] / 0.1  # (B, 2)
        found = near.isfinite()
        feats = torch.cat([rel, height[..., None], near.nan_to_num(0, posinf=0)[..., None], move[:, None].expand(-1, k, -1)], -1)
        h = self.point_net(feats).masked_fill(~found[..., None], -1e4).amax(dim=1)  # (B, hidden)
        logit = self.classify(torch.cat([h, move], -1))[:, 0]
        return logit.masked_fill(~found.any(1), -math.inf)  # nothing seen: nothing to walk into

    def forward(
        self, points: Tensor, mask: Tensor, command: Tensor, state: Tensor, frames: int,
        truth: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Roll ``frames`` frames of ``command`` (B, 5) from body ``state`` (B, 5).

        Args:
            points: (B, N, 3), mask (B, N): ``nearby_points`` in the level frame of ``state`` (so ``state`` is usually
                level at the origin, but need not be).
            truth: (B, frames + 1, 5) the true body states (training): each frame starts from the true state
                (teacher forcing). None: from the model's own, with a move applied where p(blocked) < 0.5.
        Returns:
            ``free`` (B, frames, 4) the free motion of each frame; ``blocked_logit`` (B, frames) (-inf where the command
            moves nothing); ``motion`` (B, frames, 4) the motion that happens; ``state`` (B, frames + 1, 5).
        """
        if command.shape != state.shape or command.shape[-1] != 5:
            raise ValueError(f"command and state must both be (B, 5), got {tuple(command.shape)} and {tuple(state.shape)}")
        moves = command[:, [0, 2]].norm(dim=-1) > MOVE_EPS  # (B,)
        states, free, logits, motions = [state], [], [], []
        for j in range(frames):
            s = states[-1] if truth is None else truth[:, j]
            m = self.free_motion(command, s[:, 4])
            logit = torch.full_like(m[:, 0], -math.inf)  # (B,) only a move can be blocked: the others are not scored
            if moves.all():
                logit = self.blocked_logit(points, mask, s, m)
            elif moves.any():
                logit[moves] = self.blocked_logit(points[moves], mask[moves], s[moves], m[moves])
            applied = m.clone()
            applied[:, :2] = torch.where((logit > 0)[:, None], 0.0, m[:, :2])
            free.append(m)
            logits.append(logit)
            motions.append(applied)
            states.append(Bd.advance(s, applied))
        return {
            "free": torch.stack(free, 1), "blocked_logit": torch.stack(logits, 1), "motion": torch.stack(motions, 1),
            "state": torch.stack(states, 1),
        }

    def loss(self, points: Tensor, mask: Tensor, command: Tensor, truth: Tensor, blocked: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss on chunks: truth (B, F + 1, 5) body states (level frame of frame 0), blocked (B, F) bool.

        Free motion is fitted on every frame's rotation and on the translation of unblocked frames (centimetres and
        degrees, squared); blocked by binary cross-entropy on the frames whose command moves the body near a point seen.
        """
        frames = truth.shape[1] - 1
        out = self(points, mask, command, truth[:, 0], frames, truth=truth)
        measured = Bd.frame_motion(truth)  # (B, F, 4)
        units = measured.new_tensor([100.0, 100.0, 180 / math.pi, 180 / math.pi])
        err = ((out["free"] - measured) * units) ** 2  # (B, F, 4)
        free = ~blocked
        motion_loss = (err[..., :2].sum(-1) * free).sum() / free.sum().clamp_min(1) + err[..., 2:].sum(-1).mean()
        # frames whose move could be blocked by something seen (nothing seen: -inf, never blocked, nothing to learn)
        moves = out["blocked_logit"].isfinite()
        logit = out["blocked_logit"][moves]
        bce = F.binary_cross_entropy_with_logits(logit, blocked[moves].float()) if logit.numel() else logit.sum()
        loss = motion_loss + bce
        return loss, {"loss": loss.detach(), "motion": motion_loss.detach(), "bce": bce.detach(),
                      "tilt_limit_deg": torch.rad2deg(self.tilt_limit).detach()}


def blocked_frames(truth: Tensor, command: Tensor, share: float = 0.5) -> Tensor:
    """Which frames (B, F) of measured body states (B, F + 1, 5) were blocked: the command (B, 5) moves the body, the
    body moved less than ``share`` of it."""
    measured = Bd.frame_motion(truth)[..., :2].norm(dim=-1)  # (B, F)
    wanted = command[:, [0, 2]].norm(dim=-1)[:, None]  # (B, 1)
    return (wanted > MOVE_EPS) & (measured < share * wanted)


def chunk_errors(predicted: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation (degrees) and position (metres) error (B,) of the last state of predicted against true body states
    (B, F + 1, 5)."""
    a, b = Bd.body_pose(predicted[:, -1]), Bd.body_pose(truth[:, -1])
    return torch.rad2deg(G.rotation_angle(a[:, :3, :3], b[:, :3, :3])), (a[:, :3, 3] - b[:, :3, 3]).norm(dim=-1)
