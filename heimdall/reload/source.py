"""
The config file heimdall was started with, read again on reload:
L{ConfigFile} reads it with the one config reader
(L{heimdall.config.model.config_from_bytes}) and applies the command
line's overrides, as at start-up; L{LoadedConfig} is one reading, with the
SHA-256 of the file's bytes and when it was read.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Callable, Dict, Optional

import attrs

from heimdall.clock import iso_timestamp
from heimdall.config.model import Config, config_from_bytes, read_config_bytes

__all__ = ["ConfigFile", "LoadedConfig"]


@attrs.frozen
class LoadedConfig:
    """
    A config as heimdall loaded it.

    @ivar sha256: the hex SHA-256 of the file's bytes (None: built in code).
    @ivar loaded_at: when it was read (the clock's seconds).
    """

    config: Config
    sha256: Optional[str] = None
    loaded_at: float = 0.0
    path: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "loaded_at": iso_timestamp(self.loaded_at)}


@attrs.frozen
class ConfigFile:
    """
    The config file at C{path} (made absolute: a later change of directory
    must not move it) with the command line's C{--listen} and
    C{--manager-listen} (None: the file's), which a reload keeps.
    """

    path: str = attrs.field(converter=os.path.abspath)
    listen: Optional[str] = None
    manager_listen: Optional[str] = None

    def load(self, now: Callable[[], float] = time.time) -> LoadedConfig:
        """
        Read and validate the file now (C{now}: the time it is read).

        @raise ConfigError: naming the field path (or the file) and the problem.
        """
        data = read_config_bytes(self.path)
        config = config_from_bytes(data, self.path).with_overrides(
            listen=self.listen, manager_listen=self.manager_listen
        )
        return LoadedConfig(config, hashlib.sha256(data).hexdigest(), now(), self.path)
