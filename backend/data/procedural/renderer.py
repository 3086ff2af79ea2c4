"""The procedural renderer: bakes an identity's UV texture and shades posed heads (ambient +
Lambert + Blinn-Phong, mouth interior, synthetic artefacts) with flamediff's rasteriser."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flamediff.data.procedural.appearance import Appearance, HeadRegions
from flamediff.data.procedural.patterns import (
    artefact_noise,
    hue_colour,
    noise_colours,
    scramble_uv,
    seed_fraction,
    smoothstep,
)
from flamediff.data.procedural.scene import LABEL_SYNTHETIC, FrameSpecs
from flamediff.formats.flame_asset import FlameAsset
from flamediff.geometry.mesh import vertex_normals
from flamediff.geometry.rasterizer import downsample, interpolate, rasterize, sample_texture

SUPERSAMPLE = 2
TEXTURE_UV_SIZE = 512  # baked per-identity texture
BATCH = 16             # frames per render call


@dataclass
class RenderedBatch:
    """One rendered batch of procedural frames, with the coverage the masks and tests read."""

    images: np.ndarray          # [B, R, R, 3] uint8
    head_mask: np.ndarray       # [B, R, R] float coverage of the head
    artefact_mask: np.ndarray   # [B, R, R] float coverage of the artefact regions (ears, mouth interior)


#: [T, T, 3] rest positions, [T, T] eye flags, [T, T] coverage of the UV layout's texels
Texels = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_TEXEL_CACHE: dict[tuple[str, int], Texels] = {}


class ProceduralRenderer:
    """Renders FrameSpecs of one identity with its Appearance (batched, CPU)."""

    def __init__(self, asset: FlameAsset, supersample: int = SUPERSAMPLE) -> None:
        from flamediff.flame.model import FlameModel

        self.asset = asset
        self.model = FlameModel(asset)
        self.regions = HeadRegions(asset)
        self.supersample = supersample
        self.faces = torch.as_tensor(np.asarray(asset.faces), dtype=torch.long)
        self.rest = torch.as_tensor(self.regions.rest, dtype=torch.float32)
        self.corner_uv = torch.as_tensor(np.asarray(asset.uv)[np.asarray(asset.faces_uv)], dtype=torch.float32)
        self.eye_face = torch.as_tensor(self.regions.eye_face)
        self._texels: Texels | None = None

    # region masks on canonical (rest) coordinates P [..., 3]
    def _ear_mask(self, P: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(P.shape[:-1])
        for centre in self.regions.ear_centres:
            d = (P - torch.as_tensor(centre, dtype=P.dtype)) / torch.tensor([0.016, 0.026, 0.02])
            total = total + torch.exp(-0.5 * (d * d).sum(-1))
        return smoothstep(0.25, 0.45, total)

    def _brow_mask(self, P: torch.Tensor, thickness: float) -> torch.Tensor:
        total = torch.zeros(P.shape[:-1])
        for brow in self.regions.brows:
            cx, cy = float(brow[:, 0].mean()), float(brow[:, 1].mean())
            half = float(brow[:, 0].max() - brow[:, 0].min()) * 0.55
            u = (P[..., 0] - cx) / half
            centre_y = cy + 0.003 * (1.0 - u * u) - 0.001
            band = 1.0 - smoothstep(thickness * 0.6, thickness, (P[..., 1] - centre_y).abs() * (1.0 + 0.5 * u.abs()))
            total = total + band * (1.0 - smoothstep(0.85, 1.05, u.abs()))
        front = smoothstep(float(self.regions.brows[0][:, 2].min()) - 0.02, float(self.regions.brows[0][:, 2].min()), P[..., 2])
        return total.clamp(0, 1) * front

    def _lip_mask(self, P: torch.Tensor) -> torch.Tensor:
        centre = torch.as_tensor(self.regions.mouth_centre, dtype=P.dtype)
        hx, hy = self.regions.mouth_half
        d = ((P[..., 0] - centre[0]) / hx) ** 2 + ((P[..., 1] - centre[1]) / hy) ** 2
        return (1.0 - smoothstep(0.7, 1.0, d)) * smoothstep(float(centre[2]) - 0.02, float(centre[2]) - 0.008, P[..., 2])

    def _hair_mask(self, P: torch.Tensor, look: Appearance) -> torch.Tensor:
        front = smoothstep(-0.01, 0.07, P[..., 2])
        front_y = self.regions.brow_y + look.hairline_front
        back_y = look.hairline_back if not look.cap else self.regions.eye_y + 0.03
        if look.cap:
            front_y = self.regions.brow_y + 0.03
        height = back_y + (front_y - back_y) * front
        # temples: the hairline rises at the sides of the forehead
        height = height + 0.02 * smoothstep(0.02, 0.05, P[..., 0].abs()) * front
        return smoothstep(-0.002, 0.004, P[..., 1] - height)

    def _texel_positions(self) -> Texels:
        """Rest position [T, T, 3], eye flag [T, T] and coverage [T, T] of every texel of the UV
        layout (the mesh rasterised in UV space), computed once."""
        if self._texels is None:
            key = (self.asset.identity()["hash"], TEXTURE_UV_SIZE)
            if key in _TEXEL_CACHE:
                self._texels = _TEXEL_CACHE[key]
                return self._texels
            size = TEXTURE_UV_SIZE
            uv = torch.as_tensor(np.asarray(self.asset.uv), dtype=torch.float32)
            points = torch.cat([uv, torch.ones(len(uv), 1)], -1)[None]
            K = torch.tensor([[size, 0.0, 0.0], [0.0, -size, size], [0.0, 0.0, 1.0]])
            faces_uv = torch.as_tensor(np.asarray(self.asset.faces_uv), dtype=torch.long)
            frags = rasterize(points, faces_uv, K, torch.eye(3), torch.zeros(3), size, size)
            position = interpolate(frags, self.rest, self.faces)[0]
            eye = self.eye_face[frags.face_id.clamp(min=0)][0] & frags.mask[0]
            self._texels = (position, eye, frags.mask[0])
            _TEXEL_CACHE.clear()
            _TEXEL_CACHE[key] = self._texels
        return self._texels

    def bake_texture(self, look: Appearance) -> torch.Tensor:
        """[C, T, T] UV texture of one identity: clean albedo RGB, then ear, hair and eye masks."""
        P, eye, covered = self._texel_positions()
        size = P.shape[0]
        pattern = F.interpolate(look.texture[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        pattern = pattern.permute(1, 2, 0)
        skin = torch.as_tensor(look.skin, dtype=torch.float32)
        albedo = skin * pattern[..., 0:3]
        lips = self._lip_mask(P)[..., None]
        albedo = albedo * (1 - lips) + torch.as_tensor(look.lips, dtype=torch.float32) * pattern[..., 0:3] * lips
        brows = (self._brow_mask(P, look.brow_thickness) * 0.85)[..., None]
        albedo = albedo * (1 - brows) + torch.as_tensor(look.brow_colour, dtype=torch.float32) * brows
        ears = self._ear_mask(P) * (~eye).float()
        hair = (self._hair_mask(P, look) * (1.0 - ears) * (~eye).float())[..., None]
        strands = pattern[..., 3:4]
        hair_albedo = torch.as_tensor(look.hair_colour, dtype=torch.float32) * (
            (0.92 + 0.08 * strands) if look.cap else (0.7 + 0.45 * strands.clamp(-1, 1)))
        albedo = albedo * (1 - hair) + hair_albedo * hair
        # eyes: sclera, iris, pupil from the direction out of the rest eyeball centre
        centres = torch.as_tensor(self.regions.eye_centres, dtype=torch.float32)
        which = (P[..., 0:1] < 0).float()                          # the left eye has +x
        centre = centres[0] * (1 - which) + centres[1] * which
        cosine = F.normalize(P - centre, dim=-1, eps=1e-9)[..., 2:3]
        iris = smoothstep(math.cos(math.radians(30)), math.cos(math.radians(27)), cosine)
        pupil = smoothstep(math.cos(math.radians(12)), math.cos(math.radians(10)), cosine)
        ring = 0.75 + 0.35 * smoothstep(math.cos(math.radians(27)), math.cos(math.radians(15)), cosine)
        eye_albedo = torch.tensor([0.88, 0.85, 0.82]) * (1 - iris) + torch.as_tensor(look.iris, dtype=torch.float32) * ring * iris
        eye_albedo = eye_albedo * (1 - pupil) + 0.03 * pupil
        albedo = torch.where(eye[..., None], eye_albedo, albedo)
        texture = torch.cat([albedo, ears[..., None], hair, eye[..., None].float()], -1).permute(2, 0, 1)
        return _dilate(texture, covered)

    def render(self, look: Appearance, specs: FrameSpecs, resolution: int, texture: torch.Tensor | None = None) -> RenderedBatch:
        """Render ``specs`` (one identity); ``texture`` is ``bake_texture(look)`` (baked if not given)."""
        with torch.no_grad():
            if texture is None:
                texture = self.bake_texture(look)
            return self._render(look, specs, resolution, texture)

    def _render(self, look: Appearance, specs: FrameSpecs, resolution: int, texture: torch.Tensor) -> RenderedBatch:
        """Surface, ear artefacts, lighting, the inside of the head, then the composed frames."""
        size = resolution * self.supersample
        surface = self._surface(look, specs, size, texture)
        synthetic = torch.as_tensor(specs.label == LABEL_SYNTHETIC)[surface.frame]
        albedo, artefact_ears = _ear_artefacts(surface, synthetic, specs.noise_seed)
        colour = _lit_colour(surface, specs, albedo)
        interior, in_mouth = _head_inside(surface, specs, look, synthetic)
        colour = torch.where(~surface.front[:, None], interior, colour).clamp(0, 1)
        return _compose(surface, specs, look, colour, (artefact_ears + in_mouth.float()).clamp(0, 1), self.supersample)

    def _surface(self, look: Appearance, specs: FrameSpecs, size: int, texture: torch.Tensor) -> _Surface:
        """Pose the identity, rasterise at ``size`` (supersampled) and gather what shading needs at
        every covered pixel."""
        f32 = torch.float32
        batch = len(specs.label)
        shape = torch.as_tensor(look.shape, dtype=f32)[None].expand(batch, -1)
        flame = self.model(shape=shape, expression=torch.as_tensor(specs.expression, dtype=f32),
                           pose=torch.as_tensor(specs.pose, dtype=f32),
                           translation=torch.as_tensor(specs.translation, dtype=f32))
        vertices = flame.vertices
        K = torch.as_tensor(specs.K, dtype=f32).clone()
        K[:, :2] *= self.supersample
        R = torch.as_tensor(specs.R, dtype=f32)
        t = torch.as_tensor(specs.t, dtype=f32)
        frags = rasterize(vertices, self.faces, K, R, t, size, size)
        flat = torch.nonzero(frags.face_id.view(-1) >= 0, as_tuple=True)[0]
        b = flat // (size * size)
        face = frags.face_id.view(-1)[flat]
        bary = frags.bary.view(-1, 3)[flat].to(f32)[..., None]
        corners = self.faces[face]                                  # [M, 3]
        normals = vertex_normals(vertices, self.faces)
        uv = (self.corner_uv[face] * bary).sum(1)
        return _Surface(size=size, pixel=flat, frame=b, front=frags.front.view(-1)[flat],
                        world=(vertices[b[:, None], corners] * bary).sum(1),
                        normal=F.normalize((normals[b[:, None], corners] * bary).sum(1), dim=-1, eps=1e-9),
                        uv=uv, texture=sample_texture(texture, uv[None, None])[0, 0],
                        depth=frags.depth.view(-1)[flat].to(f32),
                        nearest=frags.depth.view(batch, -1).amin(dim=1).to(f32)[b],
                        landmarks=flame.landmarks, K=K, R=R, t=t)


@dataclass
class _Surface:
    """The covered pixels of a supersampled batch (``M`` of them) and the batch's cameras."""

    size: int                  # supersampled side in pixels
    pixel: torch.Tensor        # [M] flat index into [B, size, size]
    frame: torch.Tensor        # [M] frame of each pixel
    front: torch.Tensor        # [M] bool: the visible triangle faces the camera
    world: torch.Tensor        # [M, 3] surface point
    normal: torch.Tensor       # [M, 3] unit interpolated normal
    uv: torch.Tensor           # [M, 2]
    texture: torch.Tensor      # [M, 6] albedo RGB, ears, hair, eye (see bake_texture)
    depth: torch.Tensor        # [M] camera-space depth
    nearest: torch.Tensor      # [M] the frame's nearest depth
    landmarks: torch.Tensor    # [B, L, 3] posed landmarks
    K: torch.Tensor            # [B, 3, 3] supersampled intrinsics
    R: torch.Tensor
    t: torch.Tensor

    def per_frame(self, values: np.ndarray) -> torch.Tensor:
        """A per-frame value ``[B, ...]`` at every covered pixel."""
        return torch.as_tensor(np.asarray(values), dtype=torch.float32)[self.frame]


def _ear_artefacts(surface: _Surface, synthetic: torch.Tensor, seeds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Albedo with synthetic artefact 1 (noisy saturated colour blotches on the ears of synthetic
    samples) and the ear-artefact coverage of every pixel."""
    albedo, ears = surface.texture[:, 0:3], surface.texture[:, 3]
    artefact_ears = ears * surface.front.to(torch.float32)
    if bool(synthetic.any()):
        blotch = sample_texture(artefact_noise(), scramble_uv(surface.uv, seeds, surface.frame, 0)[None, None])[0, 0]
        weight = (artefact_ears * synthetic.to(torch.float32))[:, None] * 0.9
        albedo = albedo * (1 - weight) + noise_colours(blotch) * weight
    return albedo, artefact_ears


def _lit_colour(surface: _Surface, specs: FrameSpecs, albedo: torch.Tensor) -> torch.Tensor:
    """Ambient + Lambert + Blinn-Phong with a tinted light per frame (shinier eyes, duller hair)."""
    hair, eye = surface.texture[:, 4:5], surface.texture[:, 5:6]
    L = surface.per_frame(specs.light)
    camera_centre = -torch.einsum("bji,bj->bi", surface.R, surface.t)[surface.frame]
    V = F.normalize(camera_centre - surface.world, dim=-1, eps=1e-9)
    H = F.normalize(L + V, dim=-1, eps=1e-9)
    n_dot_l = (surface.normal * L).sum(-1, keepdim=True).clamp(min=0)
    n_dot_h = (surface.normal * H).sum(-1, keepdim=True).clamp(min=0)
    ambient, diffuse, specular = (surface.per_frame(v)[:, None] for v in (specs.ambient, specs.diffuse, specs.specular))
    tint = surface.per_frame(specs.light_colour)
    shininess = 18.0 + 62.0 * eye
    strength = specular * (1.0 - 0.7 * hair) * (1 - eye) + (specular * 3.0 + 0.2) * eye
    return albedo * tint * (ambient + diffuse * n_dot_l) + strength * tint * n_dot_h.pow(shininess)


def _head_inside(surface: _Surface, specs: FrameSpecs, look: Appearance,
                 synthetic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour of the back faces (the inside of the head): the mouth interior near the projected
    mouth (bright and noisy in synthetic samples: artefact 2), dark skin elsewhere; and the
    mouth-interior flag of every pixel."""
    f32 = torch.float32
    K, R, t, b = surface.K, surface.R, surface.t, surface.frame
    mouth = surface.landmarks[:, 43:51].mean(1)                 # [B, 3] inner lips, posed
    mouth_cam = torch.einsum("bij,bj->bi", R, mouth) + t
    mouth_pix = torch.einsum("bij,bj->bi", K, mouth_cam)
    mouth_pix = mouth_pix[:, :2] / mouth_pix[:, 2:3]
    radius = 0.032 * K[:, 0, 0] / mouth_cam[:, 2]
    px = (surface.pixel % surface.size).to(f32) + 0.5
    py = ((surface.pixel // surface.size) % surface.size).to(f32) + 0.5
    near_mouth = ((px - mouth_pix[b, 0]) ** 2 + (py - mouth_pix[b, 1]) ** 2) < radius[b] ** 2
    in_mouth = ~surface.front & near_mouth
    depth_shade = (1.0 - 3.5 * (surface.depth - surface.nearest).clamp(0, 0.2))[:, None]
    ambient = surface.per_frame(specs.ambient)[:, None]
    skin = torch.as_tensor(look.skin, dtype=f32)
    interior = torch.where(in_mouth[:, None], torch.tensor([0.30, 0.07, 0.08]) * (0.8 + ambient),
                           skin * 0.25 * (0.5 + ambient)) * depth_shade
    if bool((synthetic & in_mouth).any()):
        seeds = specs.noise_seed
        noise = sample_texture(artefact_noise(), scramble_uv(surface.uv, seeds, b, 1)[None, None])[0, 0, :, :1]
        hue = torch.as_tensor(np.asarray([seed_fraction(int(x)) for x in seeds]), dtype=f32)[b]
        bright = hue_colour(hue) * (0.8 + 0.4 * noise).clamp(0, 1)
        interior = torch.where((synthetic & in_mouth)[:, None], bright, interior)
    return interior, in_mouth


def _compose(surface: _Surface, specs: FrameSpecs, look: Appearance, colour: torch.Tensor, artefact: torch.Tensor,
             supersample: int) -> RenderedBatch:
    """The head over the identity's background gradient, with head and artefact coverage, box-filtered
    down from the supersampled size."""
    f32 = torch.float32
    batch, size = len(specs.label), surface.size
    rows = (torch.arange(size, dtype=f32) + 0.5) / size
    top = torch.as_tensor(look.background[0], dtype=f32)
    bottom = torch.as_tensor(look.background[1], dtype=f32)
    bg = top * (1 - rows[:, None]) + bottom * rows[:, None]
    frame_ambient = torch.as_tensor(np.asarray(specs.ambient), dtype=f32)
    image = (bg[None, :, None, :] * (0.9 + 0.2 * frame_ambient)[:, None, None, None]).expand(batch, size, size, 3)
    image = image.reshape(-1, 3).clone()
    image[surface.pixel] = colour
    extra = torch.zeros(batch * size * size, 2)
    extra[surface.pixel, 0] = 1.0
    extra[surface.pixel, 1] = artefact
    image = downsample(image.view(batch, size, size, 3), supersample)
    extra = downsample(extra.view(batch, size, size, 2), supersample)
    images = (image * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    return RenderedBatch(images=images, head_mask=extra[..., 0].numpy(), artefact_mask=extra[..., 1].numpy())


def _dilate(texture: torch.Tensor, covered: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Grow the texture's islands by ``steps`` texels so bilinear lookups at their edges stay clean."""
    value = texture * covered.float()
    weight = covered.float()[None]
    for _ in range(steps):
        grown = F.avg_pool2d(value[None], 3, 1, 1)[0]
        count = F.avg_pool2d(weight[None], 3, 1, 1)[0]
        fill = (weight == 0) & (count > 0)
        value = torch.where(fill, grown / count.clamp(min=1e-6), value)
        weight = torch.where(fill, torch.ones_like(weight), weight)
    return value
