"""Fleet control: the fleet's description, its supervisord and nginx configs, GPU discovery, SSH hints.

Everything here is pure (no disk writes, no processes started), except `gpus`, which reads NVML.
Writing the rendered files and starting supervisord is the launcher's job.
"""
