"""ament_python build of pld_ros: the library, the node executables and the shared files.

The top-level launch/, config/ and urdf/ directories of the repository are installed into
share/pld_ros so that `ros2 launch pld_ros <file>` finds them on a ROS 2 install.
"""

import os
import runpy
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NODE_EXECUTABLES = runpy.run_path(str(HERE / "pld_ros" / "executables.py"))["NODE_EXECUTABLES"]


def shared(directory: str, pattern: str) -> tuple[str, list[str]]:
    files = sorted(os.path.relpath(p, HERE) for p in (ROOT / directory).glob(pattern) if p.is_file())
    return (f"share/pld_ros/{directory}", files)


setup(
    name="pld_ros",
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/pld_ros"]),
        ("share/pld_ros", ["package.xml"]),
        ("bin", ["bin/pld"]),
        shared("launch", "*.launch.py"),
        shared("config", "*.yaml"),
        shared("config", "*.xml"),
        shared("config/models", "*.onnx"),
        shared("urdf", "*"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pld-ros maintainers",
    maintainer_email="maintainers@pld-ros.dev",
    description="PLD (Probe, Learn, Distill) on real robot arms with ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "pld = pld_ros.cli:main",
            *(f"{name} = {module}:main" for name, module in NODE_EXECUTABLES.items()),
        ],
    },
)
