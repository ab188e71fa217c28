"""Hardware I/O behind small interfaces, each with a simulated twin. ROS-free."""
