"""robosuite Lift/Panda: the PLD core against a third-party simulator, no ROS in the loop (see README.md)."""
