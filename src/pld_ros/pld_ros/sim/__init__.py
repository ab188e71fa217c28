"""Simulated worlds: the hardware of a simulated profile, hosted in one process. ROS-free.

MuJoCo picks its OpenGL backend once, when it is first imported. Development and CI machines
have no display, so rendering goes offscreen through EGL (Mesa's llvmpipe on CPU-only machines)
unless ``MUJOCO_GL`` says otherwise; that is why this is set here, before any world imports
mujoco.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
