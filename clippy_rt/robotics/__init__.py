"""Robot integration: ROS 2 message conversion, the processing loop of the ROS 2 node
(``clippy_rt.robotics.node``) and the bag tool (``clippy-rt bag``).

Only the bag tool needs extra packages (``pip install 'clippy-rt[ros]'``: mcap,
mcap-ros2-support, rosbags); the node needs a ROS 2 installation for rclpy.
"""
