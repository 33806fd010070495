"""User-facing errors: the CLI turns these into one clear line and exit code 2."""


class SynthgradError(Exception):
    """Base class for errors caused by user input (bad files, bad configs). Message names the cause."""


class DataError(SynthgradError):
    """A data file is missing, corrupt, truncated or of the wrong format."""


class ConfigError(SynthgradError):
    """An impossible or inconsistent configuration value."""


class TrainingDiverged(SynthgradError):
    """The loss, a weight or an optimizer state became NaN or infinite (the CLI exits 3)."""
