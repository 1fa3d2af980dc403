"""Errors raised by timm_ff for bad user input.

Every error derives from :class:`TimmFFError` so the CLI can print one clear line instead of a
traceback. Each subclass also derives from the builtin a caller would naturally catch.
"""

__all__ = ['TimmFFError', 'ConfigError', 'LaunchError', 'DataError', 'CheckpointError', 'HubError', 'TrainingError', 'unknown_choice']


class TimmFFError(Exception):
    """Base class for errors caused by user input (names, paths, configs, checkpoints)."""


class ConfigError(TimmFFError, ValueError):
    """An unknown name, kwarg or value in a model, objective or recipe."""


class LaunchError(ConfigError):
    """A launch that would run something other than what was asked (no process group, FSDP not running).

    Every launched process raises it alike, so the CLI prints it from the first process only.
    """


class DataError(TimmFFError, ValueError):
    """A dataset name, data folder or column that cannot be used."""


class CheckpointError(TimmFFError, ValueError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class HubError(TimmFFError, RuntimeError):
    """A Hub download or upload that cannot happen (offline, missing repo, bad id)."""


class TrainingError(TimmFFError, RuntimeError):
    """Training cannot go on (e.g. a loss became NaN or infinite); the last checkpoint is kept."""


def unknown_choice(kind: str, value, allowed) -> ConfigError:
    """Build the standard 'unknown X' error naming the bad value and the allowed ones."""
    allowed = sorted(str(a) for a in allowed)
    return ConfigError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")
