"""`cebench pretrain PRESET_OR_YAML --out RUN_DIR [key=value ...]` (also `python -m pretext.pretrain`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .config import ConfigError, describe, load_config, preset_names

log = logging.getLogger("cebench")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the pretrain command."""
    p = argparse.ArgumentParser(prog=prog, description="Train a pretext method; exports RUN_DIR/encoder.safetensors.")
    p.add_argument("config", nargs="?", help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=100 data.root=/images")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, resolve the config and delegate to the trainer."""
    from .cli import setup_logging

    args = build_parser(prog).parse_intermixed_args(argv)
    if args.list_presets or args.help_config:
        print("\n".join(preset_names()) if args.list_presets else describe())
        return 0
    if not args.config:
        build_parser(prog).error("a preset or YAML config is required")
    setup_logging(args.verbose)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    return run(cfg, args.out or Path("runs") / Path(args.config).stem)


def run(cfg, out: Path) -> int:
    """Train and report; known failures become one clear line and a non-zero exit code."""
    from .data.images import BadImageError
    from .data.sources import DataSourceError
    from .engine.checkpoint import CheckpointError
    from .engine.trainer import NonFiniteLossError, train

    try:
        result = train(cfg, out)
    except (BadImageError, DataSourceError, CheckpointError, ConfigError) as exc:
        log.error("%s", _last_line(exc))
        return 2
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return 3
    except RuntimeError as exc:
        from .engine.distributed import peer_failure

        message = peer_failure(exc)
        if message is None:
            raise
        log.error("%s", message)
        return 4
    log.info("done: %d steps, %d images in %.1f s; encoder: %s", result.step, result.images_seen,
             result.wall_seconds, out / "encoder.safetensors")
    if result.skipped_images:
        log.warning("skipped %d unreadable image(s) in total (data.on_bad_image=skip)", result.skipped_images)
    return 0


def _last_line(exc: Exception) -> str:
    # Errors re-raised from DataLoader workers carry the worker's traceback; its last line is the message.
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
