"""Perception for audio: the voice-activity gate, features shared with training, the speech emotion model."""
