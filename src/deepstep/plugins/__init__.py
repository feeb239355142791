"""Optional concerns of a run, one file each, registered in `registry.PLUGINS` (`deepstep list
plugins`). The hooks and their order are documented in `engine/plugin.py`. Every module of this
package is imported by `registry.load_all()`, so a new plug-in is one new file here and nothing
else (copy `csv_log.py`)."""
