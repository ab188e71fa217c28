"""pld-ros: run PLD (Probe, Learn, Distill) on real and simulated robot arms with ROS 2."""

__version__ = "0.1.0"
