"""Robot descriptions (URDF) for robot_state_publisher, optionally with a name prefix. ROS-free.

The URDFs live in the repository's ``urdf/`` directory, installed to ``share/pld_ros/urdf``:
``fr3``, ``panda`` (Franka with hand, wrist and side camera) and ``yam`` (I2RT YAM with gripper and
wrist camera). Their frames are listed in docs/topics.md and in each file's header.

Two arms of one kind (the YAM GPU-insertion setup) need distinct frame and joint names in one TF
tree, so each arm's description is loaded with the arm's profile key as prefix::

    left = load_urdf("yam", prefix="left_")    # left_base_link ... left_tcp, left_joint1 ...
    right = load_urdf("yam", prefix="right_")

Each arm then runs its own robot_state_publisher (``robot_description`` = that text) in its
namespace; its arm driver publishes prefixed joint names (``left_joint1`` ...) on
``<arm>/joint_states``, and a static transform from a common world frame to ``left_base_link`` /
``right_base_link`` places the two bases (i2rt's station: right base 0.61 m along -y of the left).
Camera frames are prefixed as well (``left_wrist_camera_optical_frame``), so a camera mounted on
an arm names that frame in its profile's ``frame_id``.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

# Prefixed names must stay valid ROS names (letters, digits, underscores), like profile keys.
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Attributes that hold a link, joint or material name, per element tag. Other attributes
# (filenames, geometry, limits) are left alone.
_NAME_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "robot": ("name",),
    "link": ("name",),
    "joint": ("name",),  # also <transmission><joint name=...>, a reference to the same joint
    "parent": ("link",),
    "child": ("link",),
    "mimic": ("joint",),
    "material": ("name",),
    "transmission": ("name",),
    "actuator": ("name",),
    "gazebo": ("reference",),
}


def default_urdf_dir() -> Path:
    """Where the robot descriptions live: ``urdf/`` in the source tree, ``share/pld_ros/urdf`` installed.

    ``PLD_URDF_DIR`` overrides; on a ROS 2 install the ament index is asked last.
    """
    override = os.environ.get("PLD_URDF_DIR")
    if override:
        return Path(override)
    here = Path(__file__).resolve()
    candidates = [here.parents[3] / "urdf"]  # source tree: <root>/src/pld_ros/pld_ros/<this file>
    if len(here.parents) > 4:
        # install: <prefix>/lib/pythonX.Y/site-packages/pld_ros/<this file>
        candidates.append(here.parents[4] / "share" / "pld_ros" / "urdf")
    share = _ament_share_dir()
    if share is not None:
        candidates.append(share / "urdf")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def _ament_share_dir() -> Path | None:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # no ROS 2 on this machine: the file-system candidates are all there is
        return None
    try:
        return Path(get_package_share_directory("pld_ros"))
    except (PackageNotFoundError, OSError, ValueError):
        return None


def available_models(urdf_dir: Path | None = None) -> list[str]:
    """Names accepted by :func:`load_urdf`: the ``*.urdf`` files of the description directory."""
    directory = urdf_dir or default_urdf_dir()
    return sorted(p.stem for p in directory.glob("*.urdf"))


def load_urdf(model: str, prefix: str = "", *, urdf_dir: Path | None = None) -> str:
    """The URDF text of ``model`` ("fr3", "panda", "yam"), every name prefixed with ``prefix``.

    Without a prefix the file is returned unchanged.
    """
    directory = urdf_dir or default_urdf_dir()
    path = directory / f"{model}.urdf"
    if not path.is_file():
        known = ", ".join(available_models(directory)) or "none"
        raise ValueError(f"no robot description {model!r} in {directory} (available: {known})")
    text = path.read_text(encoding="utf-8")
    return prefix_urdf(text, prefix) if prefix else text


def prefix_urdf(text: str, prefix: str) -> str:
    """URDF ``text`` with ``prefix`` in front of every link, joint and material name and reference."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"invalid prefix {prefix!r}: use letters, digits and _, not starting with a digit")
    # Comments carry the frame documentation; keep them through the round trip.
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.fromstring(text, parser=parser)
    if root.tag != "robot":
        raise ValueError(f"not a URDF: root element is <{root.tag}>, expected <robot>")
    for element in root.iter():
        # Comments come through with a non-string tag that matches no entry.
        for attribute in _NAME_ATTRIBUTES.get(element.tag, ()):
            value = element.get(attribute)
            if value:
                element.set(attribute, prefix + value)
    note = ET.Comment(f" Names prefixed with {prefix!r} by pld_ros.robot_description. ")
    note.tail = "\n  "
    root.insert(0, note)
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
