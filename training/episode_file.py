"""The dataset format: one HDF5 file per episode plus a ``manifest.json``, and its writer, reader and checker.

A dataset is a folder::

    DIR/
      config.json                     the resolved collection config (written by training.collect)
      manifest.json                   the complete episodes, rewritten atomically after each one
      episodes/episode_000042.h5      one finished episode (the name derives from the episode index)
      episodes/episode_000043.h5.partial   an episode being written (never read; deleted on resume)

An episode file (``format = "caril-episode"``, ``format_version = 1``) holds one dataset per feature of its
feature spec, all of length ``num_frames`` (N)::

    /observation/image            vlen uint8 (N,)    the camera frame ENCODED as recorded (JPEG or PNG bytes)
    /observation/image_nbytes     int32 (N,)         byte length of each encoded frame
    /observation/image_crc32      uint32 (N,)        CRC32 of each encoded frame (files recorded since it was added)
    /observation/speed_mps, /observation/pose (N,3: x_m, y_m, yaw_deg), /observation/lateral_offset_m, ...
    /action/expert (N,3)          the expert's clean command on the state reached: the LABEL (steer, throttle, brake)
    /action/executed (N,3)        what was sent to the simulator (expert + steering noise)
    /action/noise_active (N,)     whether steering noise was active on that step
    /events/collisions, /events/lane_invasions, /events/markings   what happened since the previous frame

Frame ``t`` pairs the observation the policy saw with the command given on it (no off-by-one). The root
attributes carry the episode's metadata: backend, map, route, weather (name and parameters), seed, dt_s,
fps, camera (``CameraConfig.to_dict()``) and ``camera_K``, expert settings, noise settings, image codec,
software version, creation time, termination, ``num_frames``, the feature spec, and ``complete = True``.
Attributes that are dicts or lists are JSON strings, named in the ``json_attrs`` attribute.

Crash safety: frames are appended to ``<name>.partial`` (images flushed in chunks, so memory stays bounded)
and the file is renamed to ``<name>`` only once it is complete and synced, so a killed process never leaves
a file that looks whole. Every numeric column carries HDF5's Fletcher-32 checksum and every encoded frame its
CRC32, so a flipped byte is an error naming the file and frame, never a silently wrong value or image.
Readers open files lazily, once per process: a handle opened before a ``fork`` is never used after it, so a
torch ``DataLoader`` with workers is safe.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from sim.errors import CarilError, UsageError, permission_denied

log = logging.getLogger(__name__)

FORMAT = "caril-episode"
DATASET_FORMAT = "caril-dataset"
FORMAT_VERSION = 1
EPISODES_DIR = "episodes"
MANIFEST = "manifest.json"
CONFIG = "config.json"
PARTIAL_SUFFIX = ".partial"
CORRUPT_SUFFIX = ".corrupt"
IMAGE_KEY = "observation/image"
NBYTES_KEY = "observation/image_nbytes"
CRC_KEY = "observation/image_crc32"
REQUIRED_ATTRS = ("format", "format_version", "num_frames", "features", "fps", "dt_s", "complete")
IMAGE_FORMATS = ("jpeg", "png")


class DatasetError(CarilError):
    """A dataset or episode file that cannot be used: missing, corrupt, truncated or of another format."""


class FrameChecksumError(DatasetError):
    """A frame's encoded bytes differ from those recorded (its CRC32 fails); the message names file and frame."""


# -- feature spec ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Feature:
    """One per-frame value: numpy ``dtype`` name (or ``image`` for an encoded RGB frame, ``str`` for text),
    ``shape`` of one frame's value, optional column ``names`` for vectors, and its ``unit``."""

    dtype: str
    shape: tuple[int, ...] = ()
    names: tuple[str, ...] | None = None
    unit: str = ""

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "names": list(self.names) if self.names else None,
                "unit": self.unit}

    @classmethod
    def from_dict(cls, d: dict) -> Feature:
        return cls(d["dtype"], tuple(d["shape"]), tuple(d["names"]) if d.get("names") else None, d.get("unit", ""))


COMMAND_KEY = "observation/command"


def default_features(height: int, width: int) -> dict[str, Feature]:
    """The feature spec of recorded driving frames for a camera of ``height`` x ``width`` pixels."""
    return {
        "frame_index": Feature("int32", unit="frames since the episode start"),
        "sim_frame": Feature("int64", unit="simulator ticks"),
        "sim_time_s": Feature("float64", unit="s"),
        IMAGE_KEY: Feature("image", (height, width, 3), ("height", "width", "rgb")),
        "observation/speed_mps": Feature("float32", unit="m/s"),
        "observation/pose": Feature("float64", (3,), ("x_m", "y_m", "yaw_deg"), "m, m, deg"),
        "observation/lateral_offset_m": Feature("float32", unit="m, right of the lane centre"),
        "observation/heading_error_deg": Feature("float32", unit="deg, right of the lane direction"),
        "observation/route_progress": Feature("float32", unit="fraction of the route"),
        "observation/distance_along_m": Feature("float32", unit="m"),
        COMMAND_KEY: Feature("int8", unit="CARLA RoadOption: 1 left, 2 right, 3 straight, 4 lane follow"),
        "action/expert": Feature("float32", (3,), ("steer", "throttle", "brake"), "steer +1 = full right"),
        "action/executed": Feature("float32", (3,), ("steer", "throttle", "brake"), "steer +1 = full right"),
        "action/noise_active": Feature("bool"),
        "events/collisions": Feature("int32", unit="collision events since the previous frame"),
        "events/lane_invasions": Feature("int32", unit="lane invasion events since the previous frame"),
        "events/markings": Feature("str", unit="comma-separated crossed marking kinds"),
    }


def features_to_dict(features: dict[str, Feature]) -> dict[str, dict]:
    return {k: f.to_dict() for k, f in features.items()}


def features_from_dict(d: dict[str, dict]) -> dict[str, Feature]:
    return {k: Feature.from_dict(v) for k, v in d.items()}


# -- images ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageCodec:
    """How frames are encoded: ``jpeg`` (``jpeg_quality`` 1-100, lossy, small) or ``png`` (lossless,
    ``png_compression`` 0-9: higher is smaller and slower). JPEG is encoded without Huffman optimisation,
    which costs ~80% more time for ~7% fewer bytes at 448x448 (see ``caril bench collect``)."""

    format: str = "jpeg"
    jpeg_quality: int = 90
    png_compression: int = 1

    def __post_init__(self) -> None:
        if self.format not in IMAGE_FORMATS:
            raise UsageError(f"image format {self.format!r} is not one of {', '.join(IMAGE_FORMATS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"JPEG quality {self.jpeg_quality} is outside 1..100 (90 is a good default)")
        if not 0 <= self.png_compression <= 9:
            raise UsageError(f"PNG compression {self.png_compression} is outside 0..9 (1 is fast)")

    @property
    def extension(self) -> str:
        return ".jpg" if self.format == "jpeg" else ".png"

    def params(self) -> list[int]:
        if self.format == "jpeg":
            return [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0]
        return [cv2.IMWRITE_PNG_COMPRESSION, self.png_compression]

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """Encode an HxWx3 uint8 RGB frame into a 1-D uint8 array of file bytes."""
        ok, buf = cv2.imencode(self.extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), self.params())
        if not ok:
            raise CarilError(f"could not encode a {rgb.shape} frame as {self.format}")
        return buf.reshape(-1)

    def to_dict(self) -> dict:
        return asdict(self)


def frame_crc32(buf: np.ndarray | bytes) -> int:
    """CRC32 of one encoded frame's bytes (zlib's, as an unsigned int)."""
    data = buf if isinstance(buf, bytes) else np.ascontiguousarray(buf, np.uint8).tobytes()
    return zlib.crc32(data) & 0xFFFFFFFF


def decode_image(buf: np.ndarray) -> np.ndarray:
    """Decode JPEG or PNG bytes into an HxWx3 uint8 RGB array; raises :class:`DatasetError` if they do not decode."""
    bgr = cv2.imdecode(np.asarray(buf, np.uint8), cv2.IMREAD_COLOR) if len(buf) else None
    if bgr is None:
        raise DatasetError(f"an image of {len(buf)} bytes does not decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# -- small helpers -----------------------------------------------------------------------------------------
def software_version() -> str:
    """The installed ``caril`` version, or ``0+unknown`` when running from an uninstalled tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("caril")
    except PackageNotFoundError:
        return "0+unknown"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def episode_name(index: int) -> str:
    """The file name of episode ``index``: ``episode_000042.h5``."""
    return f"episode_{index:06d}.h5"


def episode_path(root: str | Path, index: int) -> Path:
    return Path(root) / EPISODES_DIR / episode_name(index)


def episode_index_of(path: str | Path) -> int | None:
    """The index in an episode file name, or None if the name is not an episode's."""
    name = Path(path).name
    if not (name.startswith("episode_") and name.endswith(".h5")):
        return None
    digits = name[len("episode_"):-len(".h5")]
    return int(digits) if digits.isdigit() else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _to_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=_json_default)
    return "" if value is None else value


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(f: h5py.File) -> dict[str, Any]:
    """The root attributes of an open episode file, JSON attributes decoded."""
    attrs = {k: _from_attr(v) for k, v in f.attrs.items()}
    for key in json.loads(attrs.get("json_attrs", "[]")):
        if key in attrs:
            attrs[key] = json.loads(attrs[key])
    return attrs


# -- writer ------------------------------------------------------------------------------------------------
class EpisodeWriter:
    """Writes one episode file: frames go to ``<path>.partial``; :meth:`commit` renames it to ``path``.

    Encoded images are flushed to the file every ``flush_every`` frames (bounded memory on long episodes);
    the small per-frame columns are kept in memory and written at commit.
    """

    def __init__(self, path: str | Path, features: dict[str, Feature], attrs: dict[str, Any],
                 flush_every: int = 128) -> None:
        if IMAGE_KEY not in features:
            raise ValueError(f"the feature spec needs {IMAGE_KEY!r}")
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.features, self.attrs, self.flush_every = features, dict(attrs), flush_every
        self.columns: dict[str, list] = {k: [] for k in features if k != IMAGE_KEY}
        self._pending: list[np.ndarray] = []
        self._nbytes: list[int] = []
        self._crc: list[int] = []
        self.num_frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: h5py.File | None = h5py.File(self.partial, "w")
        self._images = self._f.create_dataset(IMAGE_KEY, shape=(0,), maxshape=(None,), chunks=(64,),
                                              dtype=h5py.vlen_dtype(np.uint8))

    def append(self, encoded_image: np.ndarray, values: dict[str, Any]) -> None:
        """Add one frame: its encoded image bytes and a value for every other feature (already validated)."""
        self._pending.append(encoded_image)
        self._nbytes.append(len(encoded_image))
        self._crc.append(frame_crc32(encoded_image))
        for key, column in self.columns.items():
            column.append(values[key])
        self.num_frames += 1
        if len(self._pending) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        n0, k = self._images.shape[0], len(self._pending)
        block = np.empty(k, dtype=self._images.dtype)
        for i, buf in enumerate(self._pending):
            block[i] = buf
        self._images.resize((n0 + k,))
        # the low-level write: h5py's ds[a:b] = block turns equal-length buffers into a 2-D array and fails
        file_space = self._images.id.get_space()
        file_space.select_hyperslab((n0,), (k,))
        self._images.id.write(h5py.h5s.create_simple((k,)), file_space, block)
        self._pending = []

    def commit(self, attrs: dict[str, Any] | None = None) -> Path:
        """Write the columns and attributes, sync, and rename the partial file to its final name."""
        if self._f is None:
            raise RuntimeError("this episode was already committed or aborted")
        if self.num_frames == 0:
            raise CarilError(f"episode {self.path.name} has no frames: nothing to save")
        self._flush()
        f = self._f
        f.create_dataset(NBYTES_KEY, data=np.asarray(self._nbytes, np.int32))
        f.create_dataset(CRC_KEY, data=np.asarray(self._crc, np.uint32), fletcher32=True)
        for key, values in self.columns.items():
            feat = self.features[key]
            if feat.dtype == "str":
                f.create_dataset(key, data=np.array(values, dtype=object), dtype=h5py.string_dtype())
            else:  # checksummed: a flipped byte is a read error, not a silently wrong value
                f.create_dataset(key, data=np.asarray(values, dtype=feat.dtype).reshape(-1, *feat.shape),
                                 fletcher32=True)
        meta = {**self.attrs, **(attrs or {}), "format": FORMAT, "format_version": FORMAT_VERSION,
                "num_frames": self.num_frames, "features": features_to_dict(self.features)}
        json_keys = sorted(k for k, v in meta.items() if isinstance(v, (dict, list, tuple)))
        for key, value in meta.items():
            f.attrs[key] = _to_attr(value)
        f.attrs["json_attrs"] = json.dumps(json_keys)
        f.attrs["complete"] = True  # last: a file without it was never finished
        f.close()
        self._f = None
        _fsync(self.partial)
        os.replace(self.partial, self.path)
        _fsync(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file (the episode is dropped)."""
        if self._f is not None:
            try:
                self._f.close()
            except Exception:  # an already broken handle: the file is deleted anyway
                log.debug("closing a broken partial episode", exc_info=True)
            self._f = None
        self.partial.unlink(missing_ok=True)


# -- reader ------------------------------------------------------------------------------------------------
class EpisodeReader:
    """Random access to one episode file. Cheap to create and to pickle; the HDF5 handle used for images
    is opened on first use in each process (never shared across ``fork``); columns are read once and cached.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._attrs: dict[str, Any] | None = None
        self._columns: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None, "_pid": None}

    def _open(self) -> h5py.File:
        if self.path.exists() and not os.access(self.path, os.R_OK):  # h5py would say "corrupt or truncated"
            raise DatasetError(f"episode file {permission_denied(self.path)}")
        try:
            return h5py.File(self.path, "r", rdcc_nbytes=64 * 1024)
        except FileNotFoundError:
            raise DatasetError(f"episode file {self.path} does not exist") from None
        except OSError as e:
            raise DatasetError(f"episode file {self.path} cannot be opened (corrupt or truncated): {e}") from None

    def handle(self) -> h5py.File:
        """This process's open handle (opened lazily; reopened after a fork)."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5, self._pid = self._open(), os.getpid()
        return self._h5

    def close(self) -> None:
        """Close the handle (if this process opened it)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._pid = None, None

    @property
    def is_open(self) -> bool:
        return self._h5 is not None and self._pid == os.getpid()

    def _read(self, fn):
        if self.is_open:
            return fn(self._h5)
        with self._open() as f:
            return fn(f)

    @property
    def attrs(self) -> dict[str, Any]:
        """The episode's metadata (JSON attributes decoded)."""
        if self._attrs is None:
            attrs = self._read(read_attrs)
            if attrs.get("format") != FORMAT or not attrs.get("complete"):
                raise DatasetError(f"{self.path} is not a complete {FORMAT} file")
            self._attrs = attrs
        return self._attrs

    @property
    def features(self) -> dict[str, Feature]:
        return features_from_dict(self.attrs["features"])

    def __len__(self) -> int:
        return int(self.attrs["num_frames"])

    def column(self, key: str) -> np.ndarray:
        """A whole non-image feature column, shape ``(N, *shape)`` (cached)."""
        if key not in self._columns:
            if key == IMAGE_KEY:
                raise ValueError("images are read one by one with image(i) or encoded(i)")
            if key not in self.features and key not in (NBYTES_KEY, CRC_KEY):
                raise KeyError(f"no feature {key!r} in {self.path.name}; features: {', '.join(self.features)}")

            def read(f: h5py.File) -> np.ndarray:
                ds = f[key]
                return ds.asstr()[()].astype(str) if h5py.check_string_dtype(ds.dtype) else ds[()]

            self._columns[key] = self._read(read)
        return self._columns[key]

    def encoded(self, i: int) -> np.ndarray:
        """The encoded bytes of frame ``i`` as recorded, verified against their CRC32 where the file has one
        (:class:`DatasetError` on a mismatch)."""
        buf = self.handle()[IMAGE_KEY][i]
        crcs = self._frame_crcs()
        if crcs is not None and frame_crc32(buf) != int(crcs[i]):
            raise FrameChecksumError(f"{self.path} frame {i}: the image bytes fail their CRC32 check (corrupt data)")
        return buf

    def _frame_crcs(self) -> np.ndarray | None:
        """The recorded CRC32 of every frame, or None for a file recorded before they were stored (cached)."""
        if CRC_KEY not in self._columns:
            has = self._read(lambda f: CRC_KEY in f)
            self._columns[CRC_KEY] = self.column(CRC_KEY) if has else None
        return self._columns[CRC_KEY]

    def image(self, i: int) -> np.ndarray:
        """Frame ``i`` decoded: HxWx3 uint8 RGB."""
        return decode_image(self.encoded(i))

    def frame(self, i: int) -> dict[str, Any]:
        """Every feature of frame ``i`` (the image decoded)."""
        out: dict[str, Any] = {IMAGE_KEY: self.image(i)}
        for key in self.features:
            if key != IMAGE_KEY:
                out[key] = self.column(key)[i]
        return out


# -- manifest and dataset index ----------------------------------------------------------------------------
def read_manifest(root: str | Path) -> dict[str, Any]:
    """The dataset's manifest; :class:`DatasetError` says what to do if it is missing or unreadable."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; record one with: caril collect --out {root}")
    if not path.exists():
        raise DatasetError(f"{root} has no {MANIFEST}: not a caril dataset (record one with caril collect)")
    try:
        manifest = json.loads(path.read_text())
    except PermissionError:
        raise DatasetError(permission_denied(path)) from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is unreadable ({e}); 'caril collect --resume --out {root}' rebuilds it") from None
    if manifest.get("format") != DATASET_FORMAT:
        raise DatasetError(f"{path} is not a {DATASET_FORMAT} manifest")
    return manifest


def new_manifest(features: dict[str, Feature], fps: float, planned_episodes: int) -> dict[str, Any]:
    return {"format": DATASET_FORMAT, "format_version": FORMAT_VERSION, "software_version": software_version(),
            "fps": fps, "features": features_to_dict(features), "planned_episodes": planned_episodes,
            "total_frames": 0, "episodes": []}


def manifest_entry(index: int, attrs: dict[str, Any], frames: int, nbytes: int) -> dict[str, Any]:
    """The manifest's line for episode ``index`` from its attributes (route, weather, seed, fps, ...)."""
    return {"index": index, "file": f"{EPISODES_DIR}/{episode_name(index)}", "route": attrs.get("route", ""),
            "weather": attrs.get("weather", ""), "seed": attrs.get("seed"), "frames": int(frames),
            "noise_frames": int(attrs.get("noise_frames", 0)), "termination": attrs.get("termination", ""),
            "sim_time_s": round(frames / float(attrs["fps"]), 6), "bytes": int(nbytes), "status": "complete"}


def entry_from_file(path: str | Path) -> dict[str, Any]:
    """The manifest's line for a complete episode file, read from its attributes."""
    reader = EpisodeReader(path)
    attrs = reader.attrs
    return manifest_entry(int(attrs["episode_index"]), attrs, len(reader), Path(path).stat().st_size)


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> None:
    """Rewrite the manifest atomically, episodes sorted by index and ``total_frames`` recomputed (also in the
    caller's dict, so what a job reports after a rebuilt manifest is what the file says)."""
    manifest["total_frames"] = int(sum(e["frames"] for e in manifest["episodes"]))
    manifest = dict(manifest)
    manifest["episodes"] = sorted(manifest["episodes"], key=lambda e: e["index"])
    write_json_atomic(Path(root) / MANIFEST, manifest)


class DatasetIndex:
    """Every frame of a dataset's complete episodes, addressed by a global frame index (episode order).

    Construction reads only metadata; columns are concatenated on first use; images are read on demand
    through at most ``max_open`` open files per process (least recently used closed first). Pickling drops
    open handles, so the index can be handed to ``DataLoader`` workers.
    """

    def __init__(self, root: str | Path, max_open: int = 64) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.entries = list(self.manifest["episodes"])
        self.readers = [EpisodeReader(self.root / e["file"]) for e in self.entries]
        lengths = np.array([len(r) for r in self.readers], dtype=np.int64)
        for entry, reader, n in zip(self.entries, self.readers, lengths, strict=True):
            if n != entry["frames"]:
                raise DatasetError(f"{reader.path.name} has {n} frames but the manifest says {entry['frames']}; "
                                   "run 'caril data check' on the dataset")
            if not np.isclose(reader.attrs["fps"], self.manifest["fps"]):
                raise DatasetError(f"{reader.path.name} was recorded at {reader.attrs['fps']} fps, the dataset at "
                                   f"{self.manifest['fps']} fps: do not mix recordings of different rates")
        self.lengths = lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.features = features_from_dict(self.manifest["features"])
        self.max_open = max_open
        self._columns: dict[str, np.ndarray] = {}
        self._open: OrderedDict[int, None] = OrderedDict()

    @classmethod
    def concat(cls, roots: list[str | Path], max_open: int = 64) -> DatasetIndex:
        """One index over several datasets recorded alike (same features and rate), e.g. the expert's and a
        DAgger recording: episodes of later roots follow the first root's, named ``<root>/<file>`` (the root as
        an absolute path, so a run resumes however the path is spelled) and marked with their root's position
        (``source``), so their split keys differ from the first root's. One root
        gives exactly ``DatasetIndex(root)``."""
        first = cls(roots[0], max_open)
        for pos, root in enumerate(roots[1:], start=1):
            other = cls(root, max_open)
            if other.features != first.features or not np.isclose(other.fps, first.fps):
                raise DatasetError(f"{root} was recorded with other features or another rate than {first.root}; "
                                   "only datasets recorded alike can be trained on together")
            first.entries += [{**e, "file": f"{other.root.resolve()}/{e['file']}", "source": pos}
                              for e in other.entries]
            first.readers += other.readers
            first.lengths = np.concatenate([first.lengths, other.lengths])
        first.starts = np.concatenate([[0], np.cumsum(first.lengths)]).astype(np.int64)
        return first

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    def locate(self, i: int) -> tuple[int, int]:
        """(episode position, frame within the episode) of global frame ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} is outside 0..{len(self) - 1}")
        ep = int(np.searchsorted(self.starts, i, side="right") - 1)
        return ep, int(i - self.starts[ep])

    def episode_ids(self) -> np.ndarray:
        """The episode position of every global frame, shape (N,)."""
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    def column(self, key: str) -> np.ndarray:
        """A feature column over all frames, shape ``(N, *shape)`` (cached; episode files closed after reading)."""
        if key not in self._columns:
            parts = [r.column(key) for r in self.readers]
            for r in self.readers:
                r._columns.pop(key, None)  # the concatenation is the only copy kept
            self._columns[key] = np.concatenate(parts) if parts else np.zeros((0,))
        return self._columns[key]

    def _reader(self, ep: int) -> EpisodeReader:
        self._open.pop(ep, None)
        self._open[ep] = None  # most recently used last
        while len(self._open) > self.max_open:
            old, _ = self._open.popitem(last=False)
            self.readers[old].close()
        return self.readers[ep]

    def encoded(self, i: int) -> np.ndarray:
        ep, j = self.locate(i)
        return self._reader(ep).encoded(j)

    def image(self, i: int) -> np.ndarray:
        """Global frame ``i`` decoded: HxWx3 uint8 RGB."""
        return decode_image(self.encoded(i))

    def frame(self, i: int) -> dict[str, Any]:
        """Every feature of global frame ``i`` (the image decoded), plus ``episode`` (its position)."""
        ep, j = self.locate(i)
        out: dict[str, Any] = {IMAGE_KEY: decode_image(self._reader(ep).encoded(j)), "episode": ep}
        for key in self.features:
            if key != IMAGE_KEY:
                out[key] = self.column(key)[i]
        return out

    def close(self) -> None:
        for ep in list(self._open):
            self.readers[ep].close()
        self._open.clear()


# -- check -------------------------------------------------------------------------------------------------
def check_episode(path: str | Path, decode: str = "all", sample: int = 8, seed: int = 0) -> list[str]:
    """Problems of one episode file (an empty list when it is sound); never raises.

    Checks that it opens, has the required attributes and every feature's dataset, that all lengths equal
    ``num_frames``, that the numeric columns read (files written since their checksums were added verify
    them) and their floats are finite, and checks images (their CRC32 where the file has them, then decoding):
    ``decode="all"`` every frame, ``"sample"`` the first, the last and ``sample`` random ones, ``"none"`` none.
    """
    if Path(path).exists() and not os.access(path, os.R_OK):
        return ["cannot be read: permission denied (check its owner and mode)"]
    try:
        with h5py.File(path, "r") as f:
            return _check_open_episode(f, decode, sample, seed)
    except Exception as e:  # any failure to read is a finding, never a crash
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [f"cannot be read (corrupt or truncated): {reason}"]


def _check_open_episode(f: h5py.File, decode: str, sample: int, seed: int) -> list[str]:
    attrs = read_attrs(f)
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        return [f"missing attributes: {', '.join(missing)} (not a finished {FORMAT} file)"]
    if attrs["format"] != FORMAT:
        return [f"format is {attrs['format']!r}, not {FORMAT!r}"]
    if not attrs["complete"]:
        return ["not marked complete (the recording was interrupted)"]
    n = int(attrs["num_frames"])
    features = features_from_dict(attrs["features"])
    problems = []
    for key in [*features, NBYTES_KEY, *([CRC_KEY] if CRC_KEY in f else [])]:
        if key not in f:
            problems.append(f"missing dataset {key}")
        elif f[key].shape[:1] != (n,):
            problems.append(f"dataset {key} has {f[key].shape[0]} rows, expected {n}")
        elif key in features and features[key].dtype not in ("image", "str") and \
                f[key].shape[1:] != features[key].shape:
            problems.append(f"dataset {key} has shape {f[key].shape[1:]} per frame, expected {features[key].shape}")
    if problems:
        return problems
    for key, feat in features.items():  # small; reading verifies the checksums of files that have them
        if feat.dtype in ("image", "str"):
            continue
        values = f[key][()]
        if feat.dtype.startswith("float") and not np.isfinite(values).all():
            problems.append(f"dataset {key} holds values that are not finite (corrupt data)")
    if problems or decode == "none" or n == 0:
        return problems
    frames = range(n) if decode == "all" else sorted(
        {0, n - 1, *np.random.default_rng(seed).integers(0, n, min(sample, n)).tolist()})
    images, nbytes = f[IMAGE_KEY], f[NBYTES_KEY][()]
    crcs = f[CRC_KEY][()] if CRC_KEY in f else None  # files recorded before per-frame CRCs have none
    shape = features[IMAGE_KEY].shape
    for i in frames:
        if len(problems) >= 5:
            problems.append("... (stopped after 5 bad frames)")
            break
        buf = images[i]
        if len(buf) != nbytes[i]:
            problems.append(f"frame {i}: {len(buf)} image bytes, expected {nbytes[i]}")
            continue
        if crcs is not None and frame_crc32(buf) != int(crcs[i]):
            problems.append(f"frame {i}: the image bytes fail their CRC32 check (corrupt data)")
            continue
        try:
            img = decode_image(buf)
        except DatasetError:
            problems.append(f"frame {i}: image does not decode")
            continue
        if img.shape != shape:
            problems.append(f"frame {i}: image shape {img.shape}, expected {shape}")
    return problems


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found: per-file problems (failures) and notes (harmless leftovers)."""

    checked: list[str]
    problems: dict[str, list[str]]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(root: str | Path, decode: str = "all", sample: int = 8,
                  on_file: Callable[[str], None] | None = None) -> DatasetReport:
    """Check every episode file under ``root`` and the manifest against them; never raises for bad files
    (a missing folder raises :class:`DatasetError`). ``on_file(name)`` is called after each file."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    ep_dir = root / EPISODES_DIR
    files = sorted(p for p in ep_dir.glob("episode_*.h5")) if ep_dir.is_dir() else []
    problems: dict[str, list[str]] = {}
    notes: list[str] = []
    listed: dict[str, dict] = {}
    try:
        listed = {e["file"]: e for e in read_manifest(root)["episodes"]}
    except DatasetError as e:
        problems[MANIFEST] = [str(e)]
    for path in files:
        rel = f"{EPISODES_DIR}/{path.name}"
        found = check_episode(path, decode, sample)
        if not found and rel in listed:
            with h5py.File(path, "r") as f:
                frames = int(f.attrs["num_frames"])
            if frames != listed[rel]["frames"]:
                found = [f"has {frames} frames but the manifest lists {listed[rel]['frames']}"]
        elif not found and MANIFEST not in problems:
            notes.append(f"{rel} is complete but not in the manifest ('caril collect --resume' adopts it)")
        if found:
            problems[rel] = found
        if on_file:
            on_file(rel)
    for rel in sorted(set(listed) - {f"{EPISODES_DIR}/{p.name}" for p in files}):
        problems[rel] = ["listed in the manifest but the file is missing"]
    for path in sorted(ep_dir.glob(f"*{PARTIAL_SUFFIX}")) if ep_dir.is_dir() else []:
        notes.append(f"{EPISODES_DIR}/{path.name} is an unfinished episode (interrupted recording; "
                     "'caril collect --resume' deletes it)")
    for path in sorted(ep_dir.glob(f"*{CORRUPT_SUFFIX}")) if ep_dir.is_dir() else []:
        notes.append(f"{EPISODES_DIR}/{path.name} was set aside as unreadable by 'caril collect --resume' "
                     "(re-recorded; delete it when done)")
    return DatasetReport([f"{EPISODES_DIR}/{p.name}" for p in files], problems, notes)
