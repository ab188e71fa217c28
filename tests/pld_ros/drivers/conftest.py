"""Load order for the camera tests: see the note on Fast DDS in pld_ros.drivers.realsense_camera.

Test modules import pyrealsense2 themselves; importing the driver here first, before pytest
imports them, keeps the test process from crashing at exit once a test has run an rclpy node.
"""

import pld_ros.drivers.realsense_camera  # noqa: F401
