"""
C{twistd heimdall}: command-line options and the service maker.
"""

from __future__ import annotations

import time

from twisted.python import usage

from heimdall.errors import ConfigError
from heimdall.manager.statefile import StateFileError
from heimdall.reload.source import ConfigFile


class Options(usage.Options):
    synopsis = "[--config PATH] [--listen ENDPOINT] [--manager-listen ENDPOINT]"
    longdesc = (
        "Run the heimdall load balancer.  The configuration file is JSON; "
        "see README.md for every key.  --listen and --manager-listen "
        "override the file's listen and manager.listen."
    )
    optParameters = [
        ["config", "c", "config.json", "Path of the JSON configuration file."],
        ["listen", "l", None, "Proxy endpoint, e.g. tcp:8080:interface=127.0.0.1 (overrides the config)."],
        ["manager-listen", "m", None, "Manager endpoint (overrides the config)."],
    ]

    def postOptions(self) -> None:
        config_file = ConfigFile(self["config"], listen=self["listen"], manager_listen=self["manager-listen"])
        try:
            loaded = config_file.load(time.time)
            config = loaded.config
        except ConfigError as e:
            _refuse(f"invalid configuration: {e}")
        # Imported here, not at the top: twisted.web.proxy (under
        # heimdall.service) imports the global reactor, and twistd imports
        # this module before it installs the reactor chosen by --reactor.
        from heimdall.service import preflight

        try:
            # The manager's token and exposure, and the state file, are
            # checked here too, so that a problem is one clear line.
            preflight_result = preflight(config)
        except ConfigError as e:
            _refuse(f"invalid configuration: {e}")
        except StateFileError as e:
            _refuse(f"cannot start: {e}")
        self.heimdall_config = config
        self.heimdall_preflight = preflight_result
        # Read again on SIGHUP and POST /reload, with the same overrides.
        self.heimdall_config_file = config_file
        self.heimdall_loaded = loaded


def _refuse(problem: str) -> None:
    """
    heimdall refuses to start: the problem on stderr, exit status 1.  Not
    a C{UsageError}: twistd prints those with its whole usage text, and
    Twisted 26.4 (the newest on PyPy 3.9) then exits with status 0.
    """
    raise SystemExit(f"heimdall: {problem}")


def makeService(options: Options):
    from heimdall.service import HeimdallService

    return HeimdallService(
        options.heimdall_config,
        preflight_result=getattr(options, "heimdall_preflight", None),
        exit_on_failure=True,
        config_file=getattr(options, "heimdall_config_file", None),
        loaded=getattr(options, "heimdall_loaded", None),
    )
