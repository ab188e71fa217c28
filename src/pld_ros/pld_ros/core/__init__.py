"""The ROS-free core: everything here imports and runs without rclpy."""
