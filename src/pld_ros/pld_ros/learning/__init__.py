"""Stage 1 of PLD, without ROS: episode data, replay buffers and the residual SAC learner."""
