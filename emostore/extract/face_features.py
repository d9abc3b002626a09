"""Per-face and per-utterance features from MediaPipe Face Landmarker results.

Per face: the 52 blendshape scores, and a frontal landmark geometry (``GEOMETRY_VERSION``):

1. the 478 landmarks in pixels (x right, y down, z depth on the scale of x) are flipped into the
   camera frame of the facial transformation matrix (x right, y up, z toward the camera);
2. they are centred on the nose bridge (landmark 168) and rotated by the inverse of the matrix's
   rotation, which removes head pose (yaw, pitch, roll) and leaves the face as seen from the front;
3. they are divided by the distance between the outer eye corners (33, 263), which removes face
   size and distance to the camera;
4. ``GEOMETRY_POINTS`` (44 landmarks on brows, eyes, nose, mouth and jaw) are kept: 132 numbers.

Per utterance, :func:`pool` gives mean, standard deviation and maximum over frames with a face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GEOMETRY_VERSION = "frontal-v1"
BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
#: Landmarks of the geometry, by region ("right"/"left" are the subject's own sides).
GEOMETRY_POINTS: dict[str, tuple[int, ...]] = {
    "brow_right": (70, 63, 105, 66, 107),
    "brow_left": (300, 293, 334, 296, 336),
    "eye_right": (33, 160, 158, 133, 153, 144),
    "eye_left": (263, 387, 385, 362, 380, 373),
    "nose": (6, 1, 2, 98, 327),
    "mouth": (61, 291, 0, 37, 267, 17, 84, 314, 13, 14),
    "jaw": (152, 148, 377, 172, 397, 234, 454),
}
POINTS = np.array([i for pts in GEOMETRY_POINTS.values() for i in pts])
ORIGIN, EYE_OUTER = 168, (33, 263)
GEOMETRY_NAMES = tuple(f"lm{i}_{a}" for i in POINTS for a in "xyz")


@dataclass
class Face:
    """One detected face: landmarks in pixels [478, 3], blendshapes [52], pose matrix [4, 4]."""

    landmarks: np.ndarray
    blendshapes: np.ndarray
    matrix: np.ndarray

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in pixels: the bounding box of the landmarks."""
        x, y = self.landmarks[:, 0], self.landmarks[:, 1]
        return float(x.min()), float(y.min()), float(x.max()), float(y.max())

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


def faces_from_result(result, width: int, height: int) -> list[Face]:  # type: ignore[no-untyped-def]
    """Faces of a ``FaceLandmarkerResult`` (with blendshapes and matrices), largest first."""
    faces = []
    for i, lms in enumerate(result.face_landmarks):
        pts = np.array([(p.x * width, p.y * height, p.z * width) for p in lms], dtype=np.float64)
        shapes = np.zeros(len(BLENDSHAPES), np.float32)
        for c in result.face_blendshapes[i]:
            shapes[c.index] = c.score
        faces.append(Face(pts, shapes, np.asarray(result.facial_transformation_matrixes[i], np.float64)))
    return sorted(faces, key=lambda f: -f.area)


def frontal_geometry(face: Face) -> np.ndarray:
    """The pose-normalised geometry of ``GEOMETRY_POINTS``: [132] float32 (see the module doc)."""
    cam = face.landmarks * np.array([1.0, -1.0, -1.0])
    u, _, vt = np.linalg.svd(face.matrix[:3, :3])
    pts = (cam - cam[ORIGIN]) @ (u @ vt)  # row vectors times R == R^T applied: pose removed
    scale = max(float(np.linalg.norm(pts[EYE_OUTER[0]] - pts[EYE_OUTER[1]])), 1e-6)
    return (pts[POINTS] / scale).astype(np.float32).reshape(-1)


def face_crop(gray: np.ndarray, face: Face, size: int = 64, margin: float = 0.1) -> np.ndarray:
    """A square ``size`` x ``size`` crop around the landmark box, widened by ``margin`` per side;
    parts outside the image repeat its border pixels."""
    import cv2

    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a, b = int(round(cx - side / 2)), int(round(cy - side / 2))
    n = max(int(round(side)), 1)
    h, w = gray.shape
    pad = max(0, -a, -b, a + n - w, b + n - h)
    src = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else gray
    crop = src[b + pad:b + pad + n, a + pad:a + pad + n]
    interp = cv2.INTER_AREA if n > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def pool(frames: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-utterance vector from per-frame features [T, D] and face counts [T].

    ``[mean, std, max]`` over the frames with a face (3 D numbers), then the share of frames with a
    face and the most faces seen in one frame. Callers check that some frame has a face.
    """
    has = faces > 0
    x = frames[has].astype(np.float64)
    stats = np.concatenate([x.mean(0), x.std(0), x.max(0), [has.mean(), faces.max()]])
    return stats.astype(np.float32)


def pooled_names(frame_names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{s}:{n}" for s in ("mean", "std", "max") for n in frame_names) + ("face_fraction", "max_faces")
