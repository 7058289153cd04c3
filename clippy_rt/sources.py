"""Frame sources: image files, folders, globs, videos, cameras and network streams as one
iterator of RGB frames.

    from clippy_rt.sources import open_source

    with open_source("clip.mp4") as source:          # or "frames/", "shots/*.jpg", 0, "rtsp://..."
        for frame in source:
            seg = engine.segment(frame.image, prompts)  # frame.image: uint8 [H, W, 3], RGB

What a source string means, tested in this order:

- an int, or a string of digits: a camera index (``/dev/videoN`` on Linux);
- ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``: a network stream;
- an existing folder: its image files (``IMAGE_SUFFIXES``), sorted by name;
- an existing file with a video suffix (``VIDEO_SUFFIXES``): a video; any other existing
  file: one image;
- anything with ``*``, ``?`` or ``[``: a glob of image and video files, sorted.

Images are decoded with PIL (EXIF orientation applied, as everywhere in clippy-rt); videos,
cameras and streams with OpenCV (``opencv-python-headless``, the ``video`` extra: it reads
files, V4L2 cameras and RTSP/HTTP streams through its bundled FFmpeg on every platform
clippy-rt runs on, Jetson included, and writes the annotated video). A source that cannot
be opened is an ``InputError`` naming it; OpenCV missing is a ``BackendUnavailableError``
with the install command.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Union

import numpy as np

from .errors import BackendUnavailableError, InputError
from .images import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")
INSTALL_HINT = "install it with: pip install 'clippy-rt[video]'"

SourceLike = Union[str, int, os.PathLike]


@dataclass
class Frame:
    """One frame: ``image`` uint8 [H, W, 3] RGB; ``name`` a file-name stem for outputs
    (``<file stem>`` for images, ``<video stem>_<index>`` for video frames); ``index`` its
    position in the source; ``time_s`` its timestamp in the video (None for images and
    live sources)."""

    image: np.ndarray
    name: str
    index: int
    time_s: Optional[float] = None


def import_cv2():
    """OpenCV's module; BackendUnavailableError with the install command when missing."""
    try:
        import cv2
    except ImportError as exc:
        raise BackendUnavailableError(f"videos, cameras and streams need OpenCV ({exc}); {INSTALL_HINT}") from None
    # OpenCV's own warnings (a missing /dev/videoN, FFmpeg probing) would repeat what the
    # InputError says, in several lines.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2


class FrameSource:
    """An iterator of ``Frame`` over one source (see the module doc); a context manager that
    releases a video, camera or stream. ``kind`` is "images", "video", "camera" or
    "stream"; ``fps`` the video's or camera's frame rate where it reports one; ``count``
    the number of frames when known in advance (images, video files)."""

    def __init__(self, kind: str, *, paths: Optional[List[Path]] = None, capture=None, label: str = "",
                 fps: Optional[float] = None, count: Optional[int] = None, max_frames: Optional[int] = None) -> None:
        self.kind = kind
        self.label = label
        self.fps = fps
        self.count = count if max_frames is None or count is None else min(count, max_frames)
        self._paths = paths
        self._capture = capture
        self._max_frames = max_frames

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the video, camera or stream (nothing to do for images)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __iter__(self) -> Iterator[Frame]:
        frames = self._image_frames() if self._paths is not None else self._captured_frames()
        for index, frame in enumerate(frames):
            if self._max_frames is not None and index >= self._max_frames:
                break
            yield frame

    def _image_frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self._paths):
            if path.suffix.lower() in VIDEO_SUFFIXES:
                with open_source(path) as video:
                    for frame in video:
                        yield Frame(frame.image, frame.name, index, frame.time_s)
                continue
            yield Frame(np.asarray(load_image(path)), path.stem, index)

    def _captured_frames(self) -> Iterator[Frame]:
        cv2 = import_cv2()
        capture = self._capture
        stem = Path(self.label).stem if self.kind == "video" else self.kind
        index = 0
        while capture is not None and capture.isOpened():
            ok, bgr = capture.read()
            if not ok:
                if self.kind == "video":
                    break
                if self.kind == "stream" and index == 0:
                    raise InputError(f"{self.label}: the stream opened but sent no frame")
                break
            time_s = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.kind == "video" else None
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
            yield Frame(image, f"{stem}_{index:06d}", index, time_s)
            index += 1


def open_source(source: SourceLike, *, max_frames: Optional[int] = None) -> FrameSource:
    """A ``FrameSource`` for ``source`` (see the module doc); ``max_frames`` stops it after
    that many frames (cameras and streams otherwise run until closed).

    Raises:
        InputError: a missing file or folder, a folder or glob with no image, a file that is
            neither an image nor a video, a camera or stream that cannot be opened.
        BackendUnavailableError: a video, camera or stream without OpenCV installed.
    """
    if max_frames is not None and (not isinstance(max_frames, int) or isinstance(max_frames, bool)
                                   or max_frames < 1):
        raise InputError(f"max_frames must be a positive integer, got {max_frames!r}")
    if isinstance(source, bool) or not isinstance(source, (str, int, os.PathLike)):
        raise TypeError(f"a source is a path, a glob, a camera index or a URL, got {type(source).__name__}")
    text = os.fspath(source) if isinstance(source, os.PathLike) else source
    if isinstance(text, int) or text.isdigit():
        return _open_capture(int(text), "camera", f"camera {int(text)}", max_frames)
    if text.lower().startswith(STREAM_SCHEMES):
        return _open_capture(text, "stream", text, max_frames)
    path = Path(text).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise InputError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return FrameSource("images", paths=paths, label=str(path), count=len(paths), max_frames=max_frames)
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return _open_capture(str(path), "video", str(path), max_frames)
        return FrameSource("images", paths=[path], label=str(path), count=1, max_frames=max_frames)
    if glob.has_magic(text):
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if not paths:
            raise InputError(f"no image or video file matches {text!r}")
        return FrameSource("images", paths=paths, label=text, max_frames=max_frames,
                           count=None if any(p.suffix.lower() in VIDEO_SUFFIXES for p in paths) else len(paths))
    raise InputError(f"no such file or folder: {text} (a source is an image, a folder, a glob, a video, "
                     f"a camera index or a stream URL)")


def _open_capture(target: Union[int, str], kind: str, label: str, max_frames: Optional[int]) -> FrameSource:
    cv2 = import_cv2()
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        what = {"camera": label, "stream": f"stream {label}", "video": f"video file {label}"}[kind]
        raise InputError(f"cannot open {what}" + (" (not a video OpenCV can decode?)" if kind == "video" else ""))
    fps = capture.get(cv2.CAP_PROP_FPS) or None
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else None
    return FrameSource(kind, capture=capture, label=label, fps=fps, count=count or None, max_frames=max_frames)


class VideoWriter:
    """Annotated frames (uint8 [H, W, 3] RGB) into a video file at ``fps``, written to a
    temporary name and moved into place by ``close()``, so an interrupted run leaves no
    half-written file under the final name. MP4 (``mp4v``) for ``.mp4`` / ``.m4v`` / ``.mov``,
    MJPG for ``.avi``."""

    def __init__(self, path: Union[str, os.PathLike], fps: float) -> None:
        self.cv2 = import_cv2()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        codecs = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}
        if suffix not in codecs:
            raise InputError(f"--save-video {self.path}: the file name must end in {', '.join(codecs)}")
        if not self.path.parent.is_dir():
            raise InputError(f"--save-video {self.path}: folder {self.path.parent} does not exist")
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self._codec = codecs[suffix]
        self._partial = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self._writer = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            height, width = image.shape[:2]
            self._writer = self.cv2.VideoWriter(str(self._partial), self.cv2.VideoWriter_fourcc(*self._codec),
                                                self.fps, (width, height))
            if not self._writer.isOpened():
                raise InputError(f"cannot write the video {self.path} (codec {self._codec})")
        self._writer.write(self.cv2.cvtColor(np.ascontiguousarray(image), self.cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        """Finish the file and move it into place (``keep``), or remove it."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if keep and self.frames:
            from .formats.atomic import fsync_directory, fsync_file

            fsync_file(self._partial)              # the frames on disk before the name
            os.replace(self._partial, self.path)
            fsync_directory(self.path.parent)
        else:
            self._partial.unlink(missing_ok=True)


class FrameClock:
    """Frames per second over a run: ``tick()`` after each frame, ``fps`` at any time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.frames = 0

    def tick(self) -> None:
        self.frames += 1

    @property
    def fps(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.frames / elapsed if elapsed > 0 else 0.0
