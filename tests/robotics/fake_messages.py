"""Message stand-ins with the fields of the ROS 2 messages (rclpy, rosbags and mcap_ros2
messages are read by attribute, as these are)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def header(sec=12, nanosec=345, frame_id="camera"):
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)


def raw_image(rgb: np.ndarray, encoding: str = "rgb8", pad: int = 0, stamp=(12, 345), frame_id="camera"):
    """An Image message holding ``rgb`` (uint8 [H, W, 3]) in ``encoding``, each row padded by ``pad`` bytes."""
    height, width, _ = rgb.shape
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        pixels = np.concatenate([rgb, np.full((height, width, 1), 7, np.uint8)], axis=2)
    elif encoding == "bgra8":
        pixels = np.concatenate([rgb[:, :, ::-1], np.full((height, width, 1), 7, np.uint8)], axis=2)
    elif encoding == "mono8":
        pixels = rgb[:, :, :1]
    else:
        pixels = rgb
    rows = pixels.reshape(height, -1)
    if pad:
        rows = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    return SimpleNamespace(header=header(*stamp, frame_id=frame_id), height=height, width=width,
                           encoding=encoding, is_bigendian=0, step=rows.shape[1],
                           data=np.ascontiguousarray(rows).tobytes())
