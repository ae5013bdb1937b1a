"""emotion-edge: on-device emotion recognition from a camera and a microphone, published over MQTT."""

__version__ = "0.1.0"
