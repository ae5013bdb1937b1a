"""Capture: camera and microphone sources (device, file, stream) and the bounded hand-offs they fill.

The audio format is capture's to decide (perception and training read it from here): capture imports nothing from
perception, fusion or publishing, so the arrows point one way."""

SAMPLE_RATE = (
    16_000  # Hz, mono, 16-bit: microphones and files are opened or converted to this; training resamples to it
)
