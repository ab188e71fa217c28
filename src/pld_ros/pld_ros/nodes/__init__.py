"""Thin rclpy nodes: each wires a piece of the core to topics, services and parameters."""
