"""Robot data: rosbag2 bags (recording, reading, recovery, replay) and the datasets made from them."""
