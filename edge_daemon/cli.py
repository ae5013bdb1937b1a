"""The `emotion-edge` command: run, check, devices, replay, classify, bench, demo, collect.

Progress and logs go to stderr; results (classify, replay --events-out -) to
stdout. A mistake the user can fix exits with code 2 and one line that says
what and where; nothing the user does should end in a traceback.
"""

from __future__ import annotations

import os

# Before numpy loads: BLAS worker threads only contend with our own on matrices this small (a 2 s MFCC window costs
# 3x the CPU with OpenBLAS's default threads), and on a Pi the cores belong to the capture and perception threads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Before cv2 loads: probing a missing camera (check, devices) makes OpenCV print "[ WARN:0@0.09] global cap_v4l.cpp..."
# lines on stderr, which bury our own one-line-per-problem report; its errors still show. (TFLite's "INFO: Created
# TensorFlow Lite XNNPACK delegate" line comes from its C++ minimal logger, which reads no environment variable:
# TF_CPP_MIN_LOG_LEVEL does not silence it.)
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from . import __version__  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .errors import UserError  # noqa: E402
from .logsetup import setup_logging  # noqa: E402

logger = logging.getLogger("emotion-edge")

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_VIDEO = REPO_ROOT / "tests" / "fixtures" / "av" / "clip.mp4"
SAMPLE_AUDIO = REPO_ROOT / "tests" / "fixtures" / "av" / "clip.wav"


def find_config(arg: str | None) -> Path | None:
    """--config, else $EMOTION_EDGE_CONFIG, else ./config.yaml, else /etc/emotion-edge/config.yaml, else defaults."""
    if arg:
        return Path(arg)
    if os.environ.get("EMOTION_EDGE_CONFIG"):
        return Path(os.environ["EMOTION_EDGE_CONFIG"])
    for candidate in (Path("config.yaml"), Path("/etc/emotion-edge/config.yaml")):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from .check import refuse_startup_problems
    from .daemon import Daemon

    refuse_startup_problems(config)  # the same lines `check` prints, before anything starts
    daemon = Daemon(config)
    _stop_on_signals(daemon)
    code = daemon.run()
    _ignore_stop_signals()
    # Ctrl-C: 130, as a shell reports a process ended by SIGINT. SIGTERM is how systemd stops the service: 0.
    return 128 + signal.SIGINT if code == 0 and daemon.stopped_by == signal.SIGINT else code


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from .daemon import Daemon, ReplayInputs

    if not args.video and not args.audio:
        raise UserError("replay needs --video FILE, --audio FILE, or both")
    out = _open_events_out(args.events_out)
    try:
        daemon = Daemon(
            config,
            replay=ReplayInputs(_path(args.video), _path(args.audio), args.realtime),
            # Never the service's outbox: the service would publish what the replay queued there, as its own.
            state_dir=_path(args.state_dir) or config.path(config.state_dir) / "replay",
            events_out=out,
            publish=not args.no_mqtt,
            drain_timeout_s=args.drain_timeout,
        )
        _stop_on_signals(daemon)
        code = daemon.run()
        _ignore_stop_signals()
        if daemon.stopped_by is not None:
            # Not a complete replay: a script must be able to tell, so exit as a shell reports a killed process.
            signum = daemon.stopped_by
            logger.warning(
                "replay interrupted by %s: %d event(s) before the stop, last seq %d; %s",
                signal.Signals(signum).name,
                daemon.events,
                daemon.last_seq,
                "the whole input was processed; what the broker had not taken stays in the outbox"
                if daemon.inputs_done
                else "the rest of the input was not replayed",
            )
            return 128 + signum
        logger.info("replay done: %d event(s), last seq %d", daemon.events, daemon.last_seq)
        return code
    finally:
        if out is not None and out is not sys.stdout:
            out.close()


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from .check import reach_warnings, run_checks

    lines = run_checks(config)
    problems = [line for line in lines if not line.startswith("warning:")]  # e.g. one node of a cluster down
    for line in lines + reach_warnings(config):
        print(line)
    if not problems:
        print("ok: config, models, camera, microphone and broker all usable")
    return 2 if problems else 0


def cmd_forget(args: argparse.Namespace, config: Config) -> int:
    from .forget import forget

    broker, cleared = forget(config)
    print(f"forgot device {config.device_id!r} on {broker}: cleared {len(cleared)} retained topic(s)")
    for topic in cleared:
        print(f"  {topic}")
    return 0


def cmd_devices(args: argparse.Namespace, config: Config) -> int:
    from .capture.camera import open_capture
    from .capture.microphone import list_input_devices

    print("microphones:")
    try:
        mics = list_input_devices()
    except (OSError, ImportError) as exc:
        mics = []
        print(f"  (PortAudio unavailable: {exc})")
    for d in mics:
        print(f"  {d['index']}: {d['name']} ({d['channels']} ch, default {d['default_rate']:.0f} Hz)")
    if not mics:
        print("  none found")
    print("cameras:")
    found = False
    for dev in sorted(Path("/dev").glob("video*")):
        cap = open_capture(str(dev), config.camera)
        if cap is not None:
            print(f"  {dev}: opens")
            cap.release()
            found = True
    if not found:
        print("  none found")
    return 0


def cmd_classify(args: argparse.Namespace, config: Config) -> int:
    from .classify import classify_faces, classify_speech
    from .vision.preprocess import IMAGE_SUFFIXES

    paths = _expand(args.paths, IMAGE_SUFFIXES if args.modality == "face" else {".wav"})
    if args.modality == "face":
        results = classify_faces(config, paths, detect=not args.no_detect)
    else:
        results = classify_speech(config, paths)
    failed = 0
    for r in results:
        if "error" in r:
            failed += 1
            print(f"emotion-edge: {r['path']}: {r['error']}", file=sys.stderr)
        print(json.dumps(r), flush=True)
    return 2 if failed else 0


def cmd_collect(args: argparse.Namespace, config: None) -> int:
    from .fleet.cli import collect

    return collect(args)


def cmd_bench(args: argparse.Namespace, config: Config) -> int:
    from .bench import run_bench

    report = run_bench(config, _path(args.video) or SAMPLE_VIDEO, _path(args.audio) or SAMPLE_AUDIO, args.frames)
    print(json.dumps(report, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from .demo import run_demo

    return run_demo(
        config,
        _path(args.video) or SAMPLE_VIDEO,
        _path(args.audio) or SAMPLE_AUDIO,
        realtime=not args.fast,
        keep=args.keep,
    )


def cmd_history(args: argparse.Namespace, config: Config) -> int:
    import sqlite3

    from .history import csv_lines, jsonl_lines, open_for_cli, parse_time

    reader = open_for_cli(_path(args.state_dir) or config.path(config.state_dir))
    try:
        if args.action == "purge":
            before = parse_time(args.before, "--before") if args.before else None
            try:
                n = reader.purge(before)
            except sqlite3.Error as exc:
                raise UserError(f"{reader.path}: cannot purge the history ({exc})") from None
            print(f"purged {n} event(s){f' before {args.before}' if args.before else ''} from {reader.path}")
            return 0
        since = parse_time(args.since, "--since") if args.since else None
        until = parse_time(args.until, "--until") if args.until else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    lines = (csv_lines if args.format == "csv" else jsonl_lines)(reader.iter_events(since, until))
    if args.out in (None, "-"):
        try:
            for line in lines:
                sys.stdout.write(line)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except sqlite3.Error as exc:
            raise UserError(f"{reader.path}: the history could not be read to the end ({exc})") from None
        return 0
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            f.writelines(lines)
    except OSError as exc:
        raise UserError(f"{args.out}: cannot write the export ({exc.strerror})") from None
    except sqlite3.Error as exc:
        raise UserError(f"{reader.path}: the history could not be read to the end ({exc})") from None
    return 0


# ---------------------------------------------------------------------------- helpers


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _open_events_out(value: str | None) -> Any:
    if not value:
        return None
    if value == "-":
        return sys.stdout
    try:
        return open(value, "a", encoding="utf-8")  # append: a resumed replay keeps what it wrote
    except OSError as exc:
        raise UserError(f"{value}: cannot write events ({exc.strerror})") from None


def _expand(paths: list[str], suffixes: set[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes))
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"{p}: no such file or directory")
    if not out:
        raise UserError(f"no {'/'.join(sorted(suffixes))} files in {', '.join(paths)}")
    return out


def _stop_on_signals(daemon: Any) -> None:
    """SIGTERM/SIGINT stop the daemon cleanly (the first one counts; more change nothing); SIGHUP reloads the models
    after checking the new files (systemctl reload emotion-edge).

    The handler only records the signal: no logging (a write to stderr may be half done on this very thread), no
    Event.set or lock (the main thread may be inside that lock's code). The daemon's main loop acts on it.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: daemon.note_signal(signum))


def _ignore_stop_signals() -> None:
    """The daemon has stopped: more SIGINT/SIGTERM must not change the exit code. Python puts the default action
    back while the interpreter exits (the process would die "killed by SIGINT", a failure to systemd), but it
    leaves an ignored signal ignored."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, not {text!r}")
    return value


def _bench_frames(text: str) -> int:
    value = _positive_int(text)
    if value > 100_000:  # the frames are kept for the timing: more would only fill the memory
        raise argparse.ArgumentTypeError(f"must be at most 100000, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also refuses nan, which compares false to everything
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, not {text!r}")
    return value


def _common_options(default: Any) -> argparse.ArgumentParser:
    """--config and --log-level, accepted before the command and after it.

    After it they default to SUPPRESS: a sub-command's defaults overwrite what was parsed before it, so a default
    there would undo `emotion-edge --config X check`.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=default,
        help="config file (default: $EMOTION_EDGE_CONFIG, ./config.yaml, /etc/emotion-edge/config.yaml)",
    )
    common.add_argument(
        "--log-level",
        default=default,
        choices=("debug", "info", "warning", "error"),
        metavar="LEVEL",  # not {debug,...,error}: a usage line above an argparse error would hold a second "error"
        help="debug, info, warning or error; overrides log_level in the config",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emotion-edge",
        description="On-device emotion recognition from camera and microphone, published over MQTT.",
        parents=[_common_options(None)],
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = [_common_options(argparse.SUPPRESS)]
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="run the daemon on the camera and microphone", parents=common).set_defaults(func=cmd_run)
    sub.add_parser(
        "check", help="validate config, load models, probe devices and broker; one line per problem", parents=common
    ).set_defaults(func=cmd_check)
    sub.add_parser("devices", help="list microphones and cameras", parents=common).set_defaults(func=cmd_devices)
    sub.add_parser(
        "forget",
        help="clear this device's retained topics on the broker (Home Assistant removes it); stop the service first",
        parents=common,
    ).set_defaults(func=cmd_forget)

    r = sub.add_parser("replay", help="run the exact daemon pipeline over a video and/or wav file", parents=common)
    r.add_argument("--video", help="video file (frames)")
    r.add_argument("--audio", help="wav file (speech); resampled to 16 kHz mono if needed")
    r.add_argument(
        "--events-out", metavar="FILE.jsonl", help="also append each event as a JSON line here (- for stdout)"
    )
    r.add_argument(
        "--realtime", action="store_true", help="pace input like a live device instead of as fast as the CPU allows"
    )
    r.add_argument(
        "--state-dir", help="outbox, sequence and history of replays (default: the config's state_dir/replay)"
    )
    r.add_argument("--no-mqtt", action="store_true", help="do not connect to a broker (events go to --events-out only)")
    r.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="at the end, wait up to S seconds for the broker to take the backlog (default 30); the rest stays in the outbox",
    )
    r.set_defaults(func=cmd_replay)

    h = sub.add_parser("history", help="export or purge the local emotion history (state_dir)", parents=common)
    hsub = h.add_subparsers(dest="action", required=True, metavar="ACTION")
    he = hsub.add_parser("export", help="one row per event, oldest first (CSV or JSON lines)", parents=common)
    he.add_argument("--since", metavar="ISO", help="from this date or time (inclusive; naive times are UTC)")
    he.add_argument("--until", metavar="ISO", help="up to this date or time (exclusive)")
    he.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="csv (default) or jsonl")
    he.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    hp = hsub.add_parser("purge", help="delete events from the history", parents=common)
    hp.add_argument("--before", metavar="ISO", help="only those before this date or time (default: all)")
    for sp in (he, hp):
        sp.add_argument("--state-dir", help="the history's folder (default: state_dir from the config)")
    h.set_defaults(func=cmd_history)

    c = sub.add_parser("classify", help="classify face images or speech wavs; one JSON object per line", parents=common)
    csub = c.add_subparsers(dest="modality", required=True, metavar="MODALITY")
    cf = csub.add_parser("face", help="images (files or folders)", parents=common)
    cf.add_argument("--no-detect", action="store_true", help="each image is already a cropped face")
    cf.add_argument("paths", nargs="+")
    cs = csub.add_parser("speech", help="wav files or folders", parents=common)
    cs.add_argument("paths", nargs="+")
    c.set_defaults(func=cmd_classify)

    b = sub.add_parser(
        "bench", help="median time per stage on a video/audio (defaults to the bundled clip)", parents=common
    )
    b.add_argument("--video")
    b.add_argument("--audio")
    b.add_argument("--frames", type=_bench_frames, default=200, help="frames to time, 1 to 100000 (default 200)")
    b.set_defaults(func=cmd_bench)

    fc = sub.add_parser(
        "collect",
        help="store every device's events and status in PostgreSQL (--config collector.yaml)",
        description="Here --config is the collector's file: default $EMOTION_EDGE_COLLECTOR_CONFIG, ./collector.yaml, "
        "/etc/emotion-edge/collector.yaml (docs/fleet.md).",
        parents=common,
    )
    fc.add_argument(
        "--init-db", metavar="ADMIN_DSN", help="create the tables and grant the collector's role, then exit"
    )
    fc.set_defaults(func=cmd_collect, own_config=True)

    d = sub.add_parser(
        "demo", help="replay the bundled clip through the real models to a broker, and show the events", parents=common
    )
    d.add_argument("--video")
    d.add_argument("--audio")
    d.add_argument("--fast", action="store_true", help="as fast as the CPU allows instead of in real time")
    d.add_argument(
        "--keep", action="store_true", help="keep the device page up on 127.0.0.1 after the clip, until Ctrl-C"
    )
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or "info")
    try:
        if getattr(args, "own_config", False):  # `collect` reads its own file (collector.yaml)
            return int(args.func(args, None))
        config = load_config(find_config(args.config))
        setup_logging(args.log_level or config.log_level)
        return int(args.func(args, config))
    except UserError as exc:
        print(f"emotion-edge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Ctrl-C before the command's own handlers are in place (while the models load, say): one line, no traceback.
        print("emotion-edge: interrupted", file=sys.stderr)
        return 130
