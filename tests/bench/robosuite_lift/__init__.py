"""Tests of the robosuite Lift benchmark that need no robosuite: expert, BC, episode loop."""
