"""Capture: camera and microphone sources (device, file, stream) and the bounded hand-offs they fill."""
