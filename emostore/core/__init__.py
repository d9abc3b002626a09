"""The bottom layer: what every package shares (device, precision, threads, hashing, time)."""
