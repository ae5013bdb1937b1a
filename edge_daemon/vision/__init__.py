"""Perception for frames: face detection, face crops, the face emotion model."""
