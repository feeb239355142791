"""Optional concerns of a run, one file each, registered in `registry.PLUGINS` (`deepstep list
plugins`). The hooks and their order are documented in `engine/plugin.py`; a new plug-in is one
new file here plus its name in the import line below."""

from . import best, csv_log, forecast, metrics, pictures, progress, scratch, text  # noqa: F401  (modules register their plug-ins)
